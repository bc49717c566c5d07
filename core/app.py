"""`Conveyor`: the host object. It owns the plugin manager, storage, events and maintenance,
and is the async embedded API every protocol front end calls."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar
from uuid import UUID

import anyio
import pluggy

from . import _limits as limits
from . import lifecycle, maintenance
from ._ids import uuid7s
from ._plugins import make_plugin_manager
from .config import Settings
from .engines import load_engines
from .errors import (
    InvalidStateError,
    PluginError,
    QueuePausedError,
    ScheduleNotFoundError,
    ValidationError,
    WebhookNotFoundError,
)
from .events import EventDispatcher, cascade_events, failure_events, job_event, pushed_event, spawn_events
from .interfaces import EventSink, ProtocolServer
from .jobs import JobBuilder, prefixed
from .lifecycle import dt_to_ms, ms_to_dt
from .metrics import MetricsRegistry
from .models import (
    AckItem,
    AckResult,
    Event,
    FailOutcome,
    FlowSpec,
    FlowStatus,
    FlowSubmitted,
    FlowSummary,
    Job,
    JobSpec,
    JobState,
    QueueCounts,
    QueueInfo,
    trusted,
)
from .pulls import current_stop
from .schedules import Schedule, ScheduleSpec, build_schedule, job_error, next_run_ms
from .storage import Decide, Firing, Modified, Reject, Skip, Storage, Transition, Update
from .tasks import TaskHost
from .webhooks import Webhook, WebhookSpec, build_webhook
from .workers import WorkerRegistry

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("conveyor")


MINUTE_MS = 60_000


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Conveyor(TaskHost):
    """A job queue over one storage. Use as ``async with Conveyor("sqlite:///jobs.db") as app``.

    ``storage`` is a URL (handled by the storage hook) or a ready `Storage`; ``plugins`` are
    extra plugin objects registered after the built-ins and entry points; ``clock`` returns
    epoch milliseconds (tests pass a fake one); other keyword arguments are `Settings` fields.
    """

    def __init__(
        self,
        storage: str | Storage | None = None,
        *,
        settings: Settings | None = None,
        plugins: Iterable[object] = (),
        clock: Callable[[], int] | None = None,
        **options: Any,
    ) -> None:
        overrides: dict[str, Any] = {**options, **({"storage": storage} if isinstance(storage, str) else {})}
        if settings is None:
            settings = Settings(**overrides)
        elif overrides:
            settings = Settings(**{**settings.model_dump(), **overrides})  # validated, unlike model_copy
        self.settings = settings
        self.pm: pluggy.PluginManager = make_plugin_manager(
            disable=settings.disable_plugins, autoload=settings.plugin_autoload, extra=plugins
        )
        self.hook = self.pm.hook
        self.workers = WorkerRegistry()
        self.jobs = JobBuilder(settings.max_dag_depth)
        self.now_ms: Callable[[], int] = clock or wall_clock_ms
        self._given_storage = storage if isinstance(storage, Storage) else None
        self._storage: Storage | None = None
        self.metrics = MetricsRegistry()
        self.events = EventDispatcher([], settings.event_buffer)
        self.webhooks_version = 0
        """Bumped by every webhook registration change made through this object."""
        self._tg: anyio.abc.TaskGroup | None = None
        self._maintenance_scope: anyio.CancelScope | None = None
        self._pulls_released = False
        self._waiting_pulls: set[anyio.CancelScope] = set()
        self._schedule_errors_logged: dict[str, int] = {}
        """Schedule name -> when its failure to fire was last logged (at most once a minute)."""

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("Conveyor is not open: use 'async with Conveyor(...)' or await open()")
        return self._storage

    async def open(self) -> Conveyor:
        storage = self._given_storage or self.hook.conveyor_storage(app=self, url=self.settings.storage)
        if storage is None:
            scheme = self.settings.storage.split(":", 1)[0]
            raise ValidationError(
                f"no storage plugin handles {scheme!r} URLs (storage={self.settings.storage!r}); "
                "built in: sqlite:///path, postgresql://... (clients: http://host:6790, tcp://host:6789)",
                field="storage",
            )
        if not isinstance(storage, Storage):
            raise PluginError(f"storage hook returned {storage!r}, which is not a conveyor.Storage")
        try:
            await storage.open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await storage.close()  # release whatever a half-done open holds
            raise
        self._storage = storage
        try:
            self.hook.conveyor_engines(app=self, registry=self.workers)
            load_engines(self, self.workers, blocked=frozenset(self.settings.disable_plugins))
            self.events = EventDispatcher(
                self._collect(self.hook.conveyor_event_sinks(app=self), EventSink, "event sink"),
                self.settings.event_buffer,
                self.metrics,
                storage.event_log if self.settings.cluster_events else None,
            )
            await self.events.prepare()
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            self.events.start(self._tg)  # only schedules tasks: nothing here can fail half-way
            if self.settings.maintenance:
                # The scope is made now: `close` may come before the task first runs.
                self._maintenance_scope = anyio.CancelScope()
                self._tg.start_soon(self._maintain, self._maintenance_scope, name="conveyor-maintenance")
        except BaseException:
            await self._storage.close()
            self._storage = None
            raise
        return self

    async def close(self) -> None:
        if self._storage is None:
            return
        if self._maintenance_scope is not None:
            self._maintenance_scope.cancel()
            self._maintenance_scope = None
        await self.events.close()
        tg, self._tg = self._tg, None
        if tg is not None:
            await tg.__aexit__(None, None, None)
        storage, self._storage = self._storage, None
        await storage.close()

    async def __aenter__(self) -> Conveyor:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _maintain(self, scope: anyio.CancelScope) -> None:
        with scope:
            await maintenance.run_forever(self)

    async def run_maintenance(self) -> maintenance.SweepReport:
        """Run one maintenance sweep now (the loop runs them every ``maintenance_interval_ms``)."""
        return await maintenance.sweep(self)

    def protocol_servers(self) -> list[ProtocolServer]:
        """Every protocol server the plugins provide (server mode)."""
        return self._collect(self.hook.conveyor_protocols(app=self), ProtocolServer, "protocol server")

    @staticmethod
    def _collect(results: list[Any], kind: type, what: str) -> list[Any]:
        found: list[Any] = []
        for result in results:
            items = result if isinstance(result, (list, tuple)) else [result]
            for item in items:
                if item is None:
                    continue
                if not isinstance(item, kind):
                    raise PluginError(f"a plugin returned {item!r} as {what}, which lacks the {kind.__name__} methods")
                found.append(item)
        return found

    # -- push ----------------------------------------------------------------------------------

    async def push(self, queue: str, name: str, data: Any = None, *, options: Any = None, **flat_options: Any) -> UUID:
        """Enqueue one job; options nested in ``options`` or given as keyword arguments."""
        body: dict[str, Any] = {"name": name, "data": data, **flat_options}
        if options is not None:
            body["options"] = options
        return await self.push_job(queue, body)

    async def push_job(self, queue: str, job: JobSpec | dict[str, Any]) -> UUID:
        """Enqueue one job given whole: a `JobSpec`, or a wire body (``name``, ``data``,
        options nested or flat), as protocols receive it. A ``queue`` in it must be ``queue``."""
        limits.check_queue_name(queue)
        named: Any = queue
        if isinstance(job, dict) and "queue" in job:
            job = {**job}
            named = job.pop("queue")
        elif isinstance(job, JobSpec) and job.queue is not None:
            named = job.queue
        if named != queue:
            raise ValidationError(f"queue: the job names another queue than {queue!r}", field="queue")
        built, text = self.jobs.build_item(queue, job, self.now_ms())
        await self.storage.insert_jobs([built], [text], self.jobs.resolver([built], lambda: ["options"]))
        self._emit_pushed([built])
        return built.id

    async def push_batch(self, queue: str, jobs: Sequence[JobSpec | dict[str, Any]]) -> list[UUID]:
        """Enqueue every job or none; errors name the item (``jobs[3].options.priority``)."""
        limits.check_queue_name(queue)
        if not isinstance(jobs, (list, tuple)):
            raise ValidationError("jobs must be a list of job objects", field="jobs")
        if not 1 <= len(jobs) <= limits.MAX_BATCH:
            raise ValidationError(f"jobs must hold 1 to {limits.MAX_BATCH} items, got {len(jobs)}", field="jobs")
        now = self.now_ms()
        labels, ids = _labels(_JOB_LABELS, "jobs", len(jobs)), uuid7s(len(jobs))
        built = [
            self.jobs.build_item(queue, item, now, label, job_id)
            for item, label, job_id in zip(jobs, labels, ids, strict=False)
        ]
        jobs_built, texts = (list(column) for column in zip(*built, strict=True))
        resolve = self.jobs.resolver(jobs_built, lambda: [f"jobs[{i}].options" for i in range(len(built))])
        await self.storage.insert_jobs(jobs_built, texts, resolve)
        self._emit_pushed(jobs_built)
        return [job.id for job in jobs_built]

    async def submit_flow(self, flow: FlowSpec | dict[str, Any]) -> FlowSubmitted:
        """Create a whole dependency graph atomically: every step's job, or none.

        Steps refer to each other by ``key`` in ``needs``; ``options.depends_on`` may still name
        existing jobs by id. Every job gets the flow's ``flow_id`` (generated when absent).
        Refuses duplicate or unknown keys, self-dependencies, cycles and over-deep chains."""
        submitted, jobs, texts, labels = self.jobs.flow(flow, self.now_ms())
        await self.storage.insert_jobs(jobs, texts, self.jobs.resolver(jobs, lambda: labels))
        self._emit_pushed(jobs)
        return submitted

    # -- work ------------------------------------------------------------------------------------

    async def pull(self, queue: str, count: int = 1, *, worker_id: str | None = None, wait_ms: int = 0) -> list[Job]:
        """Claim up to ``count`` waiting jobs (highest priority, then oldest). With ``wait_ms``,
        wait up to that long for a job to arrive when the queue is empty."""
        return await self._pull(self.storage.claim_jobs, queue, count, worker_id, wait_ms)

    async def pull_json(
        self, queue: str, count: int = 1, *, worker_id: str | None = None, wait_ms: int = 0
    ) -> list[str]:
        """`pull`, each job returned as the JSON text the protocols send for it: for protocol
        front ends, which pass jobs on without using them (no `Job` objects are built)."""
        return await self._pull(self.storage.claim_jobs_json, queue, count, worker_id, wait_ms)

    async def _pull(
        self, claim: Callable[[str, int, int, str | None], Awaitable[list[T]]],
        queue: str, count: int, worker_id: str | None, wait_ms: int,
    ) -> list[T]:  # fmt: skip
        limits.check_pull(queue, count, wait_ms)
        _check_worker(worker_id)
        stop = current_stop()
        deadline = anyio.current_time() + wait_ms / 1000
        while True:
            jobs = await claim(queue, count, self.now_ms(), worker_id)
            remaining = deadline - anyio.current_time()
            if jobs or remaining <= 0 or self._pulls_released or (stop is not None and stop.stopped):
                if jobs:
                    self.metrics.inc("jobs_pulled_total", queue, amount=len(jobs))  # no event reports a claim
                return jobs
            with anyio.CancelScope() as scope:
                self._waiting_pulls.add(scope)
                if stop is not None:
                    stop.waiting = scope
                try:
                    await self.storage.wait_for_jobs(queue, remaining)
                finally:
                    self._waiting_pulls.discard(scope)
                    if stop is not None:
                        stop.waiting = None
            if stop is not None and stop.stopped:
                return []  # its client has left: claim nothing more for it

    def stop_waiting(self) -> None:
        """End every long-poll ``pull`` now (each makes one last claim and returns) and make
        later ones return at once: a server shutting down calls this so in-flight requests
        finish promptly instead of holding the shutdown for up to ``wait_ms``."""
        self._pulls_released = True
        for scope in list(self._waiting_pulls):
            scope.cancel()

    async def ack(self, job_id: UUID | str, result: Any = None, *, worker_id: str | None = None) -> None:
        """Complete an active job with ``result``. With ``worker_id``, only if that worker holds
        it (this is true of ``fail``, ``progress`` and ``heartbeat`` as well)."""
        job_id = limits.check_job_id(job_id)
        limits.check_json_bytes("result", result, limits.MAX_DATA_BYTES)
        _check_worker(worker_id)
        now = self.now_ms()
        transition = lifecycle.ack_transition({job_id: {"result": result}}, now, worker_id, self.jobs.follow_ups(now))
        done = await self._modify_one(job_id, transition)
        if self.events.active:
            self._emit([job_event("job.completed", done, now), *spawn_events(done)])

    async def ack_batch(
        self, items: Sequence[AckItem | dict[str, Any]], *, worker_id: str | None = None
    ) -> list[AckResult]:
        """Ack many jobs in one transaction; one `AckResult` per item, in order."""
        results, _ = await self._ack_batch(items, worker_id, _ack_result)
        return results

    async def ack_batch_json(
        self, items: Sequence[AckItem | dict[str, Any]], *, worker_id: str | None = None
    ) -> tuple[list[str], int]:
        """`ack_batch`, each result as the JSON text the protocols send for it, and how many
        items were acked: for protocol front ends, which pass the results on without using them
        (as `pull_json`; no `AckResult` objects are built)."""
        return await self._ack_batch(items, worker_id, _ack_result_json)

    async def _ack_batch(
        self, items: Sequence[AckItem | dict[str, Any]], worker_id: str | None, result: Callable[[Any, Any], R]
    ) -> tuple[list[R], int]:
        _check_worker(worker_id)
        if not isinstance(items, (list, tuple)):
            raise ValidationError("items must be a list of {id, result} objects", field="items")
        if not 1 <= len(items) <= limits.MAX_BATCH:
            raise ValidationError(f"items must hold 1 to {limits.MAX_BATCH} entries, got {len(items)}", field="items")
        parsed = [_parse_ack_item(index, item) for index, item in enumerate(items)]
        valid = [p for p in parsed if type(p) is tuple]
        now = self.now_ms()
        per_id: dict[UUID, dict[str, Any]] = {}
        for job_id, result_value, _ in valid:
            per_id.setdefault(job_id, {"result": result_value})  # a repeated id is refused, not re-acked
        transition = lifecycle.ack_transition(per_id, now, worker_id, self.jobs.follow_ups(now))
        outcomes = iter(await self.storage.modify_jobs([entry[0] for entry in valid], transition) if valid else [])
        results: list[R] = []
        events: list[Event] = []
        emitting, acked = self.events.active, 0
        for index, entry in enumerate(parsed):
            if isinstance(entry, ValidationError):
                raw = items[index]
                raw_id = raw.get("id") if isinstance(raw, dict) else None
                results.append(result(None if raw_id is None else str(raw_id), entry.to_wire()))
                continue
            done = next(outcomes)
            if isinstance(done.change, Reject):
                results.append(result(entry[2], done.change.error.to_wire()))
            else:
                results.append(result(entry[2], None))
                acked += 1
                if emitting:
                    events.append(job_event("job.completed", done, now))
                    if done.spawned:
                        events.extend(spawn_events(done))
        self._emit(events)
        return results, acked

    async def fail(self, job_id: UUID | str, error: str, *, worker_id: str | None = None) -> FailOutcome:
        """Record a failed attempt: retry after backoff while attempts remain, else DLQ."""
        job_id = limits.check_job_id(job_id)
        if not isinstance(error, str):
            raise ValidationError("error must be a string", field="error")
        limits.check_bytes("error", error, limits.MAX_ERROR_BYTES)
        _check_worker(worker_id)
        now = self.now_ms()
        done = await self._modify_one(job_id, lifecycle.decide_fail(error, now, worker_id))
        assert done.before is not None
        plan = lifecycle.plan_failure(done.before, error, now)
        if self.events.active:
            self._emit(failure_events(done, plan, error, now) + cascade_events(done, now))
        next_at = ms_to_dt(plan.next_attempt_ms) if plan.next_attempt_ms is not None else None
        return FailOutcome(
            id=job_id, retry=plan.will_retry, will_retry=plan.will_retry, next_attempt_at=next_at, state=plan.state
        )

    async def cancel(self, job_id: UUID | str) -> None:
        """Cancel a job that has not started (waiting, delayed or blocked)."""
        job_id = limits.check_job_id(job_id)
        now = self.now_ms()
        done = await self._modify_one(job_id, lifecycle.decide_cancel(now))
        if self.events.active:
            self._emit([job_event("job.cancelled", done, now), *cascade_events(done, now)])

    async def progress(
        self, job_id: UUID | str, progress: int | float, message: str | None = None, *, worker_id: str | None = None
    ) -> None:
        """Report progress (clamped to 0-100); ``message`` is appended to the job's logs."""
        job_id = limits.check_job_id(job_id)
        limits.check_progress(progress)
        limits.check_optional_text("message", message, limits.MAX_LOG_MESSAGE_BYTES)
        _check_worker(worker_id)
        value = lifecycle.clamp_progress(progress)
        now = self.now_ms()
        done = await self._modify_one(job_id, lifecycle.decide_progress(value, message, now, worker_id))
        if self.events.active:
            data: dict[str, Any] = {"progress": value}
            if message is not None:
                data["message"] = message
            self._emit([job_event("job.progress", done, now, data)])

    async def heartbeat(self, job_id: UUID | str, *, worker_id: str | None = None) -> None:
        """Extend an active job's lease so stall detection leaves it alone."""
        job_id = limits.check_job_id(job_id)
        _check_worker(worker_id)
        await self._modify_one(job_id, lifecycle.decide_heartbeat(self.now_ms(), worker_id))

    async def release(self, job_id: UUID | str, *, worker_id: str | None = None) -> None:
        """Give an active job back unrun: it is waiting again at once and the attempt does not
        count. Workers shutting down release what they have not started."""
        job_id = limits.check_job_id(job_id)
        _check_worker(worker_id)
        await self._modify_one(job_id, lifecycle.decide_release(self.now_ms(), worker_id))

    # -- read and manage -------------------------------------------------------------------

    async def get(self, job_id: UUID | str) -> Job | None:
        """The job, or None if no such job exists (or it was removed on completion)."""
        return await self.storage.get_job(limits.check_job_id(job_id))

    async def stats(self, queue: str) -> QueueCounts:
        """Counts by state for one queue (all zero for an unknown queue)."""
        rows = await self.storage.queues(limits.check_queue_name(queue))
        return QueueCounts(**rows[0].counts) if rows else QueueCounts()

    async def queues(self) -> list[QueueInfo]:
        """Every queue that has jobs or a pause flag, with counts."""
        return [
            QueueInfo(name=r.name, paused=r.paused, counts=QueueCounts(**r.counts)) for r in await self.storage.queues()
        ]

    async def pause(self, queue: str) -> None:
        """Stop delivering and accepting jobs for ``queue`` (persisted, all nodes)."""
        await self.storage.set_paused(limits.check_queue_name(queue), True, self.now_ms())

    async def resume(self, queue: str) -> None:
        await self.storage.set_paused(limits.check_queue_name(queue), False, self.now_ms())

    async def flow(self, flow_id: str) -> FlowStatus:
        """A flow's jobs, oldest first, and the counts by state of all of them (empty for an
        unknown flow). Jobs past the first ``MAX_FLOW_JOBS`` (100,000) are counted, not listed:
        a flow grows past that through pushes and follow-ups that carry its id."""
        field = "flow_id"
        if not isinstance(flow_id, str) or not flow_id:
            raise ValidationError("flow_id must be a non-empty string", field=field)
        limits.check_bytes(field, flow_id, limits.MAX_QUEUE_NAME_BYTES)
        listed = limits.MAX_FLOW_JOBS
        jobs = await self.storage.list_flow(flow_id, listed)
        if len(jobs) < listed:
            counts: dict[str, int] = Counter(job.state.value for job in jobs)
        else:
            counts = await self.storage.flow_counts(flow_id)
        return FlowStatus(flow_id=flow_id, jobs=jobs, summary=FlowSummary(total=sum(counts.values()), **counts))

    async def dlq(self, queue: str, limit: int = 100, offset: int = 0) -> list[Job]:
        """Dead-lettered jobs of ``queue``, most recent first."""
        limits.check_queue_name(queue)
        limits.check_count(limit, "limit", limits.MAX_LIST_LIMIT)
        limits.check_count(offset, "offset", 10**9, minimum=0)
        return await self.storage.list_jobs(queue, JobState.DLQ.value, limit=limit, offset=offset)

    # -- webhook registrations (delivered by the ``webhooks`` plugin) ------------------------

    async def add_webhook(self, spec: WebhookSpec | dict[str, Any]) -> Webhook:
        """Register a receiver for lifecycle events (``url``, optional ``events``, ``queues``
        and ``secret``); stored, so it survives restarts and serves every node."""
        webhook = build_webhook(spec, self.now_ms(), self.settings.webhook_allowed_hosts)
        await self.storage.insert_webhook(webhook)
        self.webhooks_version += 1
        return webhook

    async def webhooks(self) -> list[Webhook]:
        """Every registration, oldest first."""
        return await self.storage.list_webhooks()

    async def get_webhook(self, webhook_id: UUID | str) -> Webhook:
        webhook_id = limits.check_webhook_id(webhook_id)
        for webhook in await self.storage.list_webhooks():
            if webhook.id == webhook_id:
                return webhook
        raise WebhookNotFoundError(f"webhook {webhook_id} not found", details={"id": str(webhook_id)})

    async def remove_webhook(self, webhook_id: UUID | str) -> None:
        webhook_id = limits.check_webhook_id(webhook_id)
        if not await self.storage.delete_webhook(webhook_id):
            raise WebhookNotFoundError(f"webhook {webhook_id} not found", details={"id": str(webhook_id)})
        self.webhooks_version += 1

    # -- schedules (fired by the maintenance sweep) ------------------------------------------------

    async def add_schedule(self, spec: ScheduleSpec | dict[str, Any]) -> Schedule:
        """Create a schedule; its job is checked as a push would check it. Raises
        ``DuplicateKeyError`` when a schedule has its name."""
        now = self.now_ms()
        schedule = build_schedule(spec, now)
        self._scheduled_job(schedule, now)
        await self.storage.insert_schedule(schedule)
        return schedule

    async def schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return await self.storage.list_schedules()

    async def get_schedule(self, name: str) -> Schedule:
        schedule = await self.storage.get_schedule(_schedule_name(name))
        if schedule is None:
            raise _no_schedule(name)
        return schedule

    async def remove_schedule(self, name: str) -> None:
        if not await self.storage.delete_schedule(_schedule_name(name)):
            raise _no_schedule(name)

    async def pause_schedule(self, name: str) -> None:
        """Stop firing (persisted, every node); a paused schedule keeps its next due time."""
        if not await self.storage.set_schedule_paused(_schedule_name(name), True, self.now_ms()):
            raise _no_schedule(name)

    async def resume_schedule(self, name: str) -> None:
        """Fire again; a due time passed while paused fires once, at the next sweep. A schedule
        that reached ``max_executions`` cannot be resumed (`InvalidStateError`)."""
        if (await self.get_schedule(name)).exhausted:
            raise InvalidStateError(
                f"schedule {name!r} has pushed its max_executions jobs: delete it and create it again",
                details={"name": name},
            )
        if not await self.storage.set_schedule_paused(_schedule_name(name), False, self.now_ms()):
            raise _no_schedule(name)

    async def fire_schedules(self, now_ms: int, limit: int) -> int:
        """Push the job of every due schedule (up to ``limit``); returns how many were pushed.
        The maintenance sweep calls this. The firings run at once, so on SQLite they share
        group commits: a thousand schedules due in the same second cost a few fsyncs, not a
        thousand."""
        fired = 0

        async def fire(schedule: Schedule) -> None:
            nonlocal fired
            try:
                job, text = self._scheduled_job(schedule, now_ms)
                due = dt_to_ms(schedule.next_run_at)
                firing = Firing(schedule.name, due, next_run_ms(schedule, now_ms, due), now_ms, job, text)
                pushed = await self.storage.fire_schedule(firing)
            except QueuePausedError:
                return  # paused since the schedules were read: the firing waits for its queue
            except Exception:  # noqa: BLE001 - one schedule must not stop the others or the sweep
                if now_ms - self._schedule_errors_logged.get(schedule.name, now_ms - MINUTE_MS) >= MINUTE_MS:
                    self._schedule_errors_logged[schedule.name] = now_ms
                    log.exception("schedule %s could not fire; it stays due (logged once a minute)", schedule.name)
                return
            self._schedule_errors_logged.pop(schedule.name, None)
            if pushed:
                fired += 1
                self._emit_pushed([job])

        async with anyio.create_task_group() as tg:
            for schedule in await self.storage.due_schedules(now_ms, limit):
                tg.start_soon(fire, schedule)
        return fired

    def _scheduled_job(self, schedule: Schedule, now_ms: int) -> tuple[Job, str]:
        """The job a firing of ``schedule`` pushes; errors name the schedule's fields."""
        try:
            return self.jobs.build_item(schedule.queue, schedule.job_body(), now_ms)
        except ValidationError as exc:
            raise job_error(exc) from None

    # -- shared plumbing ---------------------------------------------------------------------

    async def _modify_one(self, job_id: UUID, decide: Decide | Transition) -> Modified:
        [done] = await self.storage.modify_jobs([job_id], decide)
        if isinstance(done.change, Reject):
            raise done.change.error
        return done

    async def apply_failures(self, ids: Sequence[UUID], decide: Decide, now_ms: int) -> int:
        """Apply a maintenance decision (stall, timeout, TTL) and emit its events; returns how
        many jobs changed."""
        changed = 0
        events: list[Event] = []
        for done in await self.storage.modify_jobs(ids, decide):
            if isinstance(done.change, (Skip, Reject)) or done.before is None:
                continue
            changed += 1
            change = done.change
            state = change.values["state"] if isinstance(change, Update) else JobState.DLQ
            if done.before.state is JobState.ACTIVE:  # a failed attempt: reported as `fail` reports one
                error = change.values.get("last_error") if isinstance(change, Update) else change.error
                data = {"error": error, "attempt": done.before.attempt + 1, "will_retry": state is not JobState.DLQ}
                events.append(job_event("job.failed", done, now_ms, data))
            if state is JobState.DLQ:
                events.append(job_event("job.dlq", done, now_ms))
            events.extend(cascade_events(done, now_ms))
        self._emit(events)
        return changed

    def _emit(self, events: list[Event]) -> None:
        if events and self.events.active:
            self.events.emit(events)

    def _emit_pushed(self, jobs: list[Job]) -> None:
        if self.events.active:
            self.events.emit([pushed_event(job) for job in jobs])


_JOB_LABELS = tuple(f"jobs[{index}]" for index in range(limits.MAX_BATCH))
"""Where each pushed item is, for its errors: made once, not per item pushed."""
_ACK_KEYS = frozenset({"id", "result"})


def _labels(made: tuple[str, ...], name: str, count: int) -> Sequence[str]:
    """``count`` labels (``name[i]``): those made at import, or more if the limit was raised since."""
    return made if count <= len(made) else [f"{name}[{index}]" for index in range(count)]


def _schedule_name(name: Any) -> str:
    return limits.check_queue_name(name, "name")


def _no_schedule(name: str) -> ScheduleNotFoundError:
    return ScheduleNotFoundError(f"schedule {str(name)[:256]!r} not found", details={"name": str(name)[:256]})


def _check_worker(worker_id: Any) -> None:
    limits.check_optional_text("worker_id", worker_id, limits.MAX_WORKER_ID_BYTES)


def _ack_result(job_id: str | None, error: dict[str, Any] | None) -> AckResult:
    return trusted(AckResult, {"id": job_id, "ok": error is None, "error": error})


def _ack_result_json(job_id: str | None, error: dict[str, Any] | None) -> str:
    """What `wire.encode` writes for ``_ack_result(job_id, error)`` (a lone surrogate in a
    refused item's id aside, which that cannot encode)."""
    if error is None and job_id is not None:  # an acked item: its id is what str() writes (`_parse_ack_item`)
        return f'{{"id":"{job_id}","ok":true,"error":null}}'
    # A refused item's id is whatever the client sent. A lone surrogate in it is shown as its
    # escape text, as error messages show one: JSON's \\u escape would carry it through, and
    # strict parsers (serde_json, so RustQueue's clients) refuse the whole reply for it.
    shown = "null" if job_id is None else limits.dumps(limits.printable(job_id))
    return f'{{"id":{shown},"ok":{"true" if error is None else "false"},"error":{limits.dumps(error)}}}'


def _parse_ack_item(index: int, item: Any) -> tuple[UUID, Any, str] | ValidationError:
    """``(id, result, the id's text)``, or the error located at the item (``items[3].id``)."""
    if not (isinstance(item, dict) and item.keys() <= _ACK_KEYS):  # not the common shape
        try:
            ack = limits.parse(AckItem, item, f"items[{index}]")
        except ValidationError as exc:
            return exc
        item = {"id": ack.id, "result": ack.result}
    text, result = item.get("id"), item.get("result")
    try:
        # An id already in the form `str()` writes is echoed in the reply as the client sent
        # it, rather than written again (0.7 µs per acked job); any other form is parsed and
        # the reply gives it in that form.
        if (job_id := limits.canonical_job_id(text)) is None:
            job_id = limits.check_job_id(text)  # parses another form, or refuses
            text = str(job_id)
        if result is not None:
            limits.check_json_bytes("result", result, limits.MAX_DATA_BYTES)
    except ValidationError as exc:
        return prefixed(exc, f"items[{index}]")  # the label made only for a refused item
    return job_id, result, text
