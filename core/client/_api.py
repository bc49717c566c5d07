"""`Client`: the embedded API's methods, run by a remote server through a transport."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self
from uuid import UUID

from pydantic import BaseModel

from .. import _limits as limits
from ..errors import JobNotFoundError, ValidationError
from ..lifecycle import clamp_progress
from ..models import (
    OPTION_FIELDS,
    AckItem,
    AckResult,
    FailOutcome,
    FlowSpec,
    FlowStatus,
    FlowSubmitted,
    Job,
    JobSpec,
    QueueCounts,
    QueueInfo,
)
from ..schedules import Schedule, ScheduleSpec
from ..tasks import TaskHost
from ..webhooks import WebhookSpec
from ..wire import WebhookInfo
from ..workers import WorkerRegistry


class Transport(Protocol):
    """Sends one command and returns its success reply; raises the `ConveyorError` a failure
    reply names (rebuilt with `error_for_code`), or `ClientConnectionError`."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def call(self, cmd: str, params: dict[str, Any], wait_s: float = 0) -> dict[str, Any]:
        """``wait_s``: how long the server may hold the request on purpose (long-poll), on
        top of the transport's own timeout."""
        ...


SETTLE_S = 5.0
"""How long a cancelled TCP ``pull`` may still take to get its reply and give back the jobs in
it (HTTP's plain pull, shielded, takes up to the client's timeout)."""


async def give_back(transport: Transport, reply: dict[str, Any], worker_id: Any) -> None:
    """Release the jobs in a ``pull`` reply whose caller was cancelled: they wait again at
    once (the attempt not counted) instead of sitting active until the stall timeout. Best
    effort: a job that cannot be released is reclaimed by that timeout."""
    jobs = reply.get("jobs") or ([reply["job"]] if reply.get("job") else [])
    holder = {"worker_id": worker_id} if worker_id is not None else {}
    for job in jobs:
        try:
            await transport.call("release", {"id": job["id"], **holder})
        except Exception:  # noqa: BLE001, S112 - best effort (see above)
            continue


def _jsonable(value: Any, field: str) -> Any:
    """``value`` as the JSON the server will parse; what cannot be JSON is refused here, by
    name, as the embedded API refuses it."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    try:
        text = json.dumps(value, default=_encode_default, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} is not JSON-serializable: {exc}", field=field) from None
    limits.check_keys_survive(field, value, text)
    return json.loads(text)


def _checked(value: Any, locate: Callable[[], Any]) -> Any:
    """``value`` as the JSON the server will parse, serialized once. Only when that fails, or
    its text could hold colliding keys, does ``locate`` run the item-by-item checks, which
    raise naming the field (or return the value, if the keys were fine after all)."""
    try:
        text = json.dumps(value, default=_encode_default, allow_nan=False)
    except (TypeError, ValueError):
        return locate()
    if limits.keys_may_collide(text):
        return locate()
    return json.loads(text)


def _job_body(job: Any, where: str = "") -> Any:
    """A job as the server will parse it, each field checked under the name the embedded API
    gives it (``data``, ``options.metadata``, ``jobs[3].data``)."""
    if isinstance(job, BaseModel) or not isinstance(job, dict):
        return _jsonable(job, where.rstrip(".") or "job")
    body: dict[str, Any] = {}
    for key, value in job.items():
        if key == "options" and isinstance(value, dict):
            body[key] = {k: _jsonable(v, f"{where}options.{k}") for k, v in value.items()}
        else:
            body[key] = _jsonable(value, f"{where}options.{key}" if key in OPTION_FIELDS else f"{where}{key}")
    return body


def _encode_default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _ack_item(item: Any, where: str) -> Any:
    if isinstance(item, dict):  # a bad item is the server's to refuse, in its own result
        return {key: _jsonable(value, f"{where}.{key}") for key, value in item.items()}
    return _jsonable(item, where)


def _id(job_id: UUID | str) -> str:
    return str(job_id)


class Client(TaskHost):
    """A hosted Conveyor with the embedded API (same names, arguments, results and errors).

    Get one with ``conveyor.connect("http://host:6790")`` or ``"tcp://host:6789"``, and use it
    as ``async with``.
    """

    def __init__(self, transport: Transport, url: str) -> None:
        self.transport = transport
        self.url = url
        self.workers = WorkerRegistry()
        """Engines for `conveyor worker` in this process (entry points load when it opens)."""

    async def open(self) -> Self:
        from ..engines import load_engines  # engines may import the client's package

        await self.transport.open()
        load_engines(self, self.workers)
        return self

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, cmd: str, wait_s: float = 0, **params: Any) -> dict[str, Any]:
        sent = {key: _jsonable(value, key) for key, value in params.items() if value is not None}
        return await self.transport.call(cmd, sent, wait_s)

    # -- jobs ----------------------------------------------------------------------------------

    async def push(self, queue: str, name: str, data: Any = None, *, options: Any = None, **flat_options: Any) -> UUID:
        body: dict[str, Any] = {"name": name, "data": data, **flat_options}
        if options is not None:
            body["options"] = options
        return await self.push_job(queue, body)

    async def push_job(self, queue: str, job: JobSpec | dict[str, Any]) -> UUID:
        body = _checked(job, lambda: _job_body(job))
        if not isinstance(body, dict):
            raise ValidationError("job must be an object", field="job")
        if body.get("queue", queue) != queue:
            raise ValidationError(f"queue: the job names another queue than {queue!r}", field="queue")
        reply = await self.transport.call("push", {**body, "queue": queue})
        return UUID(reply["id"])

    async def push_batch(self, queue: str, jobs: Sequence[JobSpec | dict[str, Any]]) -> list[UUID]:
        if not isinstance(jobs, (list, tuple)):
            raise ValidationError("jobs must be a list of job objects", field="jobs")
        bodies = _checked(list(jobs), lambda: [_job_body(job, f"jobs[{i}].") for i, job in enumerate(jobs)])
        reply = await self.transport.call("push_batch", {"queue": queue, "jobs": bodies})
        return [UUID(job_id) for job_id in reply["ids"]]

    async def pull(self, queue: str, count: int = 1, *, worker_id: str | None = None, wait_ms: int = 0) -> list[Job]:
        limits.check_pull(queue, count, wait_ms)
        wait_s = wait_ms / 1000
        reply = await self._call("pull", wait_s, queue=queue, count=count, worker_id=worker_id, wait_ms=wait_ms or None)
        jobs = reply.get("jobs")
        if jobs is None:
            jobs = [reply["job"]] if reply.get("job") is not None else []
        return [Job.model_validate(job) for job in jobs]

    async def ack(self, job_id: UUID | str, result: Any = None, *, worker_id: str | None = None) -> None:
        await self._call("ack", id=_id(job_id), result=result, worker_id=worker_id)

    async def ack_batch(
        self, items: Sequence[AckItem | dict[str, Any]], *, worker_id: str | None = None
    ) -> list[AckResult]:
        if not isinstance(items, (list, tuple)):
            raise ValidationError("items must be a list of {id, result} objects", field="items")
        sent = _checked(list(items), lambda: [_ack_item(item, f"items[{i}]") for i, item in enumerate(items)])
        limits.check_optional_text("worker_id", worker_id, limits.MAX_WORKER_ID_BYTES)  # as the embedded API
        params = {"items": sent} if worker_id is None else {"items": sent, "worker_id": worker_id}
        reply = await self.transport.call("ack_batch", params)  # checked once above, not again by _call
        return [AckResult.model_validate(result) for result in reply["results"]]

    async def fail(self, job_id: UUID | str, error: str, *, worker_id: str | None = None) -> FailOutcome:
        reply = await self._call("fail", id=_id(job_id), error=error, worker_id=worker_id)
        return FailOutcome.model_validate({**reply, "id": _id(job_id)})

    async def cancel(self, job_id: UUID | str) -> None:
        await self._call("cancel", id=_id(job_id))

    async def progress(
        self, job_id: UUID | str, progress: int | float, message: str | None = None, *, worker_id: str | None = None
    ) -> None:
        limits.check_progress(progress)
        progress = clamp_progress(progress)  # as the server would: JSON has no infinities to send
        await self._call("progress", id=_id(job_id), progress=progress, message=message, worker_id=worker_id)

    async def heartbeat(self, job_id: UUID | str, *, worker_id: str | None = None) -> None:
        await self._call("heartbeat", id=_id(job_id), worker_id=worker_id)

    async def release(self, job_id: UUID | str, *, worker_id: str | None = None) -> None:
        await self._call("release", id=_id(job_id), worker_id=worker_id)

    # -- read and manage -----------------------------------------------------------------------

    async def get(self, job_id: UUID | str) -> Job | None:
        try:
            reply = await self._call("get", id=_id(job_id))
        except JobNotFoundError:
            return None
        return Job.model_validate(reply["job"])

    async def stats(self, queue: str) -> QueueCounts:
        return QueueCounts.model_validate((await self._call("stats", queue=queue))["counts"])

    async def queues(self) -> list[QueueInfo]:
        return [QueueInfo.model_validate(info) for info in (await self._call("queues"))["queues"]]

    async def pause(self, queue: str) -> None:
        await self._call("queue_pause", queue=queue)

    async def resume(self, queue: str) -> None:
        await self._call("queue_resume", queue=queue)

    async def dlq(self, queue: str, limit: int = 100, offset: int = 0) -> list[Job]:
        reply = await self._call("dlq", queue=queue, limit=limit, offset=offset)
        return [Job.model_validate(job) for job in reply["jobs"]]

    async def flow(self, flow_id: str) -> FlowStatus:
        reply = await self._call("flow", flow_id=flow_id)
        return FlowStatus.model_validate(reply)

    async def submit_flow(self, flow: FlowSpec | dict[str, Any]) -> FlowSubmitted:
        body = _jsonable(flow, "flow")
        if not isinstance(body, dict):
            raise ValidationError("flow must be an object with steps", field="flow")
        reply = await self.transport.call("submit_flow", body)
        return FlowSubmitted.model_validate(reply)

    # -- webhook registrations: `WebhookInfo` (the secret never leaves the server) -------------

    async def add_webhook(self, spec: WebhookSpec | dict[str, Any]) -> WebhookInfo:
        body = _jsonable(spec, "spec")
        if not isinstance(body, dict):
            raise ValidationError("spec must be an object with url, events, queues, secret", field="spec")
        return WebhookInfo.model_validate((await self.transport.call("webhook_create", body))["webhook"])

    async def webhooks(self) -> list[WebhookInfo]:
        return [WebhookInfo.model_validate(w) for w in (await self._call("webhook_list"))["webhooks"]]

    async def get_webhook(self, webhook_id: UUID | str) -> WebhookInfo:
        return WebhookInfo.model_validate((await self._call("webhook_get", id=str(webhook_id)))["webhook"])

    async def remove_webhook(self, webhook_id: UUID | str) -> None:
        await self._call("webhook_delete", id=str(webhook_id))

    # -- schedules ---------------------------------------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec | dict[str, Any]) -> Schedule:
        body = _jsonable(spec, "spec")
        if not isinstance(body, dict):
            raise ValidationError("spec must be an object with name, queue, job_name and a cron_expr or every_ms",
                                  field="spec")  # fmt: skip
        # the body as given (`_call` would drop its None values, which the server validates)
        return Schedule.model_validate((await self.transport.call("schedule_create", body))["schedule"])

    async def schedules(self) -> list[Schedule]:
        return [Schedule.model_validate(s) for s in (await self._call("schedule_list"))["schedules"]]

    async def get_schedule(self, name: str) -> Schedule:
        return Schedule.model_validate((await self._call("schedule_get", name=name))["schedule"])

    async def remove_schedule(self, name: str) -> None:
        await self._call("schedule_delete", name=name)

    async def pause_schedule(self, name: str) -> None:
        await self._call("schedule_pause", name=name)

    async def resume_schedule(self, name: str) -> None:
        await self._call("schedule_resume", name=name)
