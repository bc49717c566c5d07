"""Building jobs from what callers send: one `JobBuilder` per `Conveyor`.

Every size limit is checked here, data is serialized once (the text that is stored), follow-ups
are checked at push as the ack will build them, and a submitted flow becomes its jobs in
dependency order. Nothing here touches storage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from . import _limits as limits
from . import dag
from ._ids import uuid7
from .errors import ValidationError
from .lifecycle import ms_to_dt
from .models import (
    DEFAULT_OPTION_VALUES,
    FlowSpec,
    FlowSubmitted,
    Job,
    JobSpec,
    JobState,
    bare_body,
    gather_flat_options,
)
from .storage import FollowUps, ResolveParents


class JobBuilder:
    def __init__(self, max_dag_depth: int) -> None:
        self.max_dag_depth = max_dag_depth

    def flow(
        self, flow: FlowSpec | dict[str, Any], now_ms: int
    ) -> tuple[FlowSubmitted, list[Job], list[str], list[str]]:
        """The jobs of a flow, parents first, with their data texts and error labels. Steps
        refer to each other by ``key``; every job gets the flow's ``flow_id`` (generated when
        absent). Refuses duplicate or unknown keys, self-dependencies and cycles."""
        if isinstance(flow, dict) and isinstance(flow.get("steps"), list):
            steps = [gather_flat_options(step, f"steps[{i}]") for i, step in enumerate(flow["steps"])]
            flow = {**flow, "steps": steps}
        spec = limits.parse(FlowSpec, flow)
        if len(spec.steps) > limits.MAX_FLOW_JOBS:
            raise ValidationError(f"steps: at most {limits.MAX_FLOW_JOBS} steps per flow", field="steps")
        flow_id = spec.flow_id or str(uuid7())
        limits.check_bytes("flow_id", flow_id, limits.MAX_QUEUE_NAME_BYTES)
        index: dict[str, int] = {}
        for i, step in enumerate(spec.steps):
            if step.key in index:
                raise ValidationError(f"steps[{i}].key: step key {step.key!r} is used twice", field=f"steps[{i}].key")
            index[step.key] = i
        order = dag.dependency_order({step.key: step.needs for step in spec.steps})
        now = now_ms
        ids: dict[str, UUID] = {}
        built: list[tuple[Job, str]] = []
        labels: list[str] = []
        for key in order:
            i = index[key]
            step, where = spec.steps[i], f"steps[{i}]"
            if step.options.flow_id not in (None, flow_id):
                raise ValidationError(
                    f"{where}.options.flow_id: a step cannot leave its flow", field=f"{where}.options.flow_id"
                )
            parents = [*step.options.depends_on, *(ids[other] for other in step.needs)]
            options = step.options.model_copy(update={"flow_id": flow_id, "depends_on": parents})
            queue = limits.check_queue_name(step.queue, f"{where}.queue")
            try:
                job, text = self.build(queue, JobSpec(name=step.name, data=step.data, options=options), now)
            except ValidationError as exc:
                raise prefixed(exc, where) from None
            ids[key] = job.id
            built.append((job, text))
            labels.append(f"{where}.options")
        submitted = FlowSubmitted(flow_id=flow_id, ids={step.key: ids[step.key] for step in spec.steps})
        return submitted, [job for job, _ in built], [text for _, text in built], labels

    def follow_ups(self, now_ms: int) -> FollowUps:
        """The spec's chaining rules, run inside the ack's transaction for each parent whose
        metadata holds ``follow_ups`` (validated when the parent was pushed)."""

        def build(parent_id: UUID, meta: Any, flow_id: str | None, acked: dict[str, Any]) -> Any:
            built: list[Any] = []
            follow_ups = dag.follow_ups_of(meta)  # none unless metadata is an object with the key
            if not follow_ups:
                return built
            inherited = {k: v for k, v in meta.items() if k != "follow_ups"}
            for i, follow in enumerate(follow_ups):
                spec = dag.follow_up_spec(follow, parent_id, flow_id, inherited, acked.get("result"))
                job, text = self.build(limits.check_queue_name(follow.queue), spec, now_ms)
                resolver = dag.parent_resolver([f"metadata.follow_ups[{i}]"], self.max_dag_depth)
                built.append((job, text, resolver))
            return built

        return build

    def _check_follow_ups(self, metadata: Any, now_ms: int) -> None:
        """Refuse at push what would fail at ack: each follow-up is built as the ack would build
        it (sizes, names, its own nested follow-ups), with a stand-in parent and result."""
        inherited = {k: v for k, v in metadata.items() if k != "follow_ups"} if isinstance(metadata, dict) else None
        for i, follow in enumerate(dag.follow_ups_of(metadata)):
            where = f"options.metadata.follow_ups[{i}]"
            spec = dag.follow_up_spec(follow, uuid7(), None, inherited, None)
            try:
                self.build(limits.check_queue_name(follow.queue, f"{where}.queue"), spec, now_ms)
            except ValidationError as exc:
                raise prefixed(exc, where) from None

    def resolver(self, jobs: list[Job], labels: Callable[[], list[str]]) -> ResolveParents | None:
        """What checks the parents of ``jobs`` as they are inserted; None when none has any.
        ``labels()`` locates each job in error messages, made only when needed."""
        if not any(job.depends_on for job in jobs):
            return None
        return dag.parent_resolver(labels(), self.max_dag_depth)

    def build_item(
        self, queue: str, item: Any, now_ms: int, where: str = "", job_id: UUID | None = None
    ) -> tuple[Job, str]:
        """`build` for a `JobSpec` or a wire body (options nested or flat; anything else is
        refused by validation), in ``queue`` unless the item names its own; errors are located
        at ``where`` (``jobs[3]``)."""
        if (bare := bare_body(item)) is not None:  # the common body: no spec object needed
            name, data, own_queue = bare
            return _located(where, _build_bare, _target(queue, own_queue, where), name, data, now_ms, job_id)
        spec = JobSpec.parse(item, where)
        return _located(where, self.build, _target(queue, spec.queue, where), spec, now_ms, job_id)

    def build(self, queue: str, spec: JobSpec, now_ms: int, job_id: UUID | None = None) -> tuple[Job, str]:
        """A new job from ``spec`` (every size checked, follow-ups checked as the ack would build
        them), and its data serialized once for storage. Its id is ``job_id``, else a new one:
        a batch makes its ids together (`uuid7s`)."""
        o = spec.options
        if o.__dict__ == DEFAULT_OPTION_VALUES:  # the common job: nothing else to check
            return _build_bare(queue, spec.name, spec.data, now_ms, job_id)
        limits.check_bytes("name", spec.name, limits.MAX_JOB_NAME_BYTES)
        data_text = limits.check_json_bytes("data", spec.data, limits.MAX_DATA_BYTES)
        if o.metadata is not None:
            limits.check_json_bytes("options.metadata", o.metadata, limits.MAX_METADATA_BYTES)
            self._check_follow_ups(o.metadata, now_ms)
        if o.unique_key is not None:
            limits.check_bytes("options.unique_key", o.unique_key, limits.MAX_UNIQUE_KEY_BYTES)
        if o.custom_id is not None:
            limits.check_bytes("options.custom_id", o.custom_id, limits.MAX_CUSTOM_ID_BYTES)
        for i, tag in enumerate(o.tags):
            limits.check_bytes(f"options.tags[{i}]", tag, limits.MAX_TAG_BYTES)
        for name in ("group_id", "flow_id"):
            if (value := getattr(o, name)) is not None:
                limits.check_bytes(f"options.{name}", value, limits.MAX_QUEUE_NAME_BYTES)
        return Job.trusted(_job_values(queue, spec, now_ms, job_id)), data_text


def _job_values(queue: str, spec: JobSpec, now_ms: int, job_id: UUID | None = None) -> dict[str, Any]:
    """Every field of the new job ``spec`` describes."""
    o = spec.options
    now = ms_to_dt(now_ms)
    delayed = o.delay_ms > 0
    return dict(
        id=uuid7() if job_id is None else job_id,
        custom_id=o.custom_id, name=spec.name, queue=queue, data=spec.data, result=None,
        state=JobState.DELAYED if delayed else JobState.WAITING, progress=0, logs=[], priority=o.priority,
        delay_until=ms_to_dt(now_ms + o.delay_ms) if delayed else None, created_at=now, updated_at=now,
        started_at=None, completed_at=None, max_attempts=o.max_attempts, attempt=0, backoff=o.backoff,
        backoff_delay_ms=o.backoff_delay_ms, last_error=None, ttl_ms=o.ttl_ms, timeout_ms=o.timeout_ms,
        unique_key=o.unique_key, tags=list(o.tags), group_id=o.group_id, metadata=o.metadata,
        depends_on=list(dict.fromkeys(o.depends_on)), flow_id=o.flow_id, lifo=o.lifo,
        remove_on_complete=o.remove_on_complete, remove_on_fail=o.remove_on_fail, worker_id=None,
        last_heartbeat=None,
    )  # fmt: skip


_BARE_JOB = _job_values("", JobSpec(name="-"), 0)
"""A job with every option at its default; `_build_bare` fills in the rest (~3x cheaper than
reading each option back from the spec)."""


def _target(queue: str, named: str | None, where: str) -> str:
    """The item's own queue when it names one (checked), else ``queue``."""
    if not named:
        return queue
    return limits.check_queue_name(named, f"{where}.queue" if where else "queue")


def _located(where: str, build: Callable[..., tuple[Job, str]], *args: Any) -> tuple[Job, str]:
    """``build(*args)``, its errors located at ``where`` inside a batch (as they are, outside one)."""
    if not where:
        return build(*args)
    try:
        return build(*args)
    except ValidationError as exc:
        raise prefixed(exc, where) from None


def _build_bare(queue: str, name: str, data: Any, now_ms: int, job_id: UUID | None = None) -> tuple[Job, str]:
    """A new job with every option at its default, and its data serialized for storage."""
    limits.check_bytes("name", name, limits.MAX_JOB_NAME_BYTES)
    data_text = limits.check_json_bytes("data", data, limits.MAX_DATA_BYTES)
    now = ms_to_dt(now_ms)
    values = {
        **_BARE_JOB, "id": uuid7() if job_id is None else job_id, "name": name, "queue": queue, "data": data,
        "created_at": now, "updated_at": now, "logs": [], "tags": [], "depends_on": [],
    }  # fmt: skip
    return Job.trusted(values), data_text


def prefixed(exc: ValidationError, where: str) -> ValidationError:
    """The same error, located inside a batch: ``data is ...`` -> ``jobs[2].data is ...``."""
    field = f"{where}.{exc.field}" if exc.field else where
    starts_with_field = exc.field is not None and exc.message.startswith(exc.field)
    message = f"{where}.{exc.message}" if starts_with_field else f"{where}: {exc.message}"
    return type(exc)(message, field=field, details={**exc.details, "field": field})
