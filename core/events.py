"""Event dispatch: committed lifecycle events fan out to sinks without slowing the queue.

`emit` never awaits: each sink has a bounded buffer drained by its own task. A full buffer
drops the event for that sink only, counts it and logs (at most once per ``LOG_EVERY_S``).

A sink's ``scope`` says which events it gets when several nodes share the storage (see
`EventSink`). Then this node's events are also appended, in batches from a background task,
to the storage's shared `EventLog`: ``"cluster"`` sinks follow that log (every node's events,
each once), and a ``"once"`` sink takes the cluster-wide cursor of its name, so each event
reaches it on exactly one node. On a single-process storage every sink gets this process's
events, which are all the events there are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from . import lifecycle
from .errors import PluginError
from .interfaces import EVENT_SCOPES, EventSink
from .lifecycle import ms_to_dt
from .models import Event, EventName, Job, JobState
from .storage import EventLog, Modified

if TYPE_CHECKING:
    from .metrics import MetricsRegistry

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0
DRAIN_ON_CLOSE_S = 5.0
MERGE_EVENTS = 1_000
"""A batch-taking sink woken after a while takes up to about this many waiting events at once
(a tenth of the default buffer: the rest stays free while it works)."""
LOG_BATCH = 500
APPEND_ATTEMPTS = 6
"""Tries to append a batch to the shared event log over ~3 s (a killed connection, a restart)."""
LOG_POLL_S = 1.0
"""Followers of the shared log re-read at least this often, in case a wake-up was missed."""


def sink_name(sink: EventSink) -> str:
    return str(getattr(sink, "name", None) or type(sink).__name__)


def sink_scope(sink: EventSink) -> str:
    scope = getattr(sink, "scope", "node")
    if scope not in EVENT_SCOPES:
        raise PluginError(f"event sink {sink_name(sink)!r} has scope {scope!r}; use one of {', '.join(EVENT_SCOPES)}")
    return str(scope)


class _Feed:
    """One consumer's buffer: batches of events (one per operation, so a 1,000-job batch
    costs one hand-over, not 1,000), bounded by the number of events they hold."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending = 0
        self.closed = False
        self._waiting: deque[Sequence[Event]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        """Resolved by `put` when the consumer sleeps: a busy consumer costs the producer
        nothing. A bare asyncio future (Conveyor runs on asyncio): an ``anyio.Event`` costs
        several µs per wake-up in backend detection, paid by every sink on every push."""

    def put(self, events: Sequence[Event]) -> None:
        if self.closed:
            return
        self._waiting.append(events)
        self.pending += len(events)
        self._wake()

    def close(self) -> None:
        """No more events; the consumer finishes what is waiting, then stops."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            if not self._wakeup.done():
                self._wakeup.set_result(None)
            self._wakeup = None

    async def batches(self, most: int = MERGE_EVENTS) -> AsyncIterator[Sequence[Event]]:
        """Operations in order, whole, merged up to about ``most`` events per batch. It sleeps
        only when nothing is waiting: a consumer that yielded to the loop between operations
        would fall behind a loop busy with many producers (each pass may queue one per producer)."""
        waiting = self._waiting
        while True:
            if not waiting:
                if self.closed:
                    return
                self._wakeup = asyncio.get_running_loop().create_future()
                await self._wakeup
                continue
            batch = waiting.popleft()
            if waiting and len(batch) < most:
                merged = list(batch)  # ``batch`` is shared with the other feeds
                while waiting and len(merged) < most:
                    merged.extend(waiting.popleft())
                batch = merged
            try:
                yield batch
            finally:
                self.pending -= len(batch)


class EventDispatcher:
    def __init__(
        self,
        sinks: Sequence[EventSink],
        buffer: int,
        metrics: MetricsRegistry | None = None,
        event_log: EventLog | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.buffer = buffer
        self.metrics = metrics
        self.event_log = event_log
        self.dropped = 0
        self._feeds: list[_Feed] = []
        """Fed by `emit`: this node's sinks, and the publisher to the shared log."""
        self._following: list[_Feed] = []
        """``"cluster"`` sinks on a shared storage, fed from the shared log instead."""
        self._following_sinks: list[EventSink] = []
        self._scopes: list[anyio.CancelScope] = []
        self._followers: list[anyio.CancelScope] = []
        self._runners: list[anyio.CancelScope] = []
        self._drained: list[anyio.Event] = []
        self._log_start = 0
        self._last_warning = 0.0
        for sink in self.sinks:
            sink_scope(sink)  # refuse a bad scope when the sink is registered, not on first event

    @property
    def active(self) -> bool:
        """Whether anyone listens; callers skip building events when not."""
        return bool(self._feeds)

    async def prepare(self) -> None:
        """Read where the shared log ends, so ``"cluster"`` sinks start from now (before the
        task group exists: a failure here leaves nothing running)."""
        if self.event_log is not None and any(sink_scope(sink) == "cluster" for sink in self.sinks):
            self._log_start = await self.event_log.last_seq()

    def start(self, tg: TaskGroup) -> None:
        shared = self.event_log
        for sink in self.sinks:
            scope, name = sink_scope(sink), sink_name(sink)
            if callable(run := getattr(sink, "run", None)):
                self._follow(tg, run, stop_last=True)
            if shared is not None and scope == "once":
                self._follow(tg, self._consume, shared, sink)
                continue
            feed = _Feed(name)
            if shared is not None and scope == "cluster":
                self._following.append(feed)
                self._following_sinks.append(sink)
            else:
                self._feeds.append(feed)
            tg.start_soon(self._deliver, feed, sink, name=f"conveyor-sink:{name}")
        if shared is not None:
            feed = _Feed("event-log")
            self._feeds.append(feed)
            tg.start_soon(self._publish, shared, feed, name="conveyor-events:publish")
            if self._following:
                self._follow(tg, self._read_log, shared, self._log_start)

    def _follow(self, tg: TaskGroup, loop: Any, *args: Any, stop_last: bool = False) -> None:
        """Run ``loop`` until `close`: at once, or (``stop_last``) after the buffers drained."""

        scope = anyio.CancelScope()  # made now: `close` may come before the task first runs
        (self._runners if stop_last else self._followers).append(scope)

        async def run() -> None:
            with scope:
                await loop(*args)

        tg.start_soon(run, name=f"conveyor-events:{loop.__name__}")

    def emit(self, events: Sequence[Event]) -> None:
        """Hand the events of one operation to every feed, never waiting (one tuple, shared)."""
        shared = tuple(events)
        for feed in self._feeds:
            self._offer(feed, shared)

    def _offer(self, feed: _Feed, events: Sequence[Event]) -> None:
        if feed.pending + len(events) > self.buffer:
            self._drop(feed.name, events)
            return
        feed.put(events)

    def _drop(self, name: str, events: Sequence[Event]) -> None:
        self.dropped += len(events)
        if self.metrics is not None:
            self.metrics.inc("events_dropped_total", name, amount=len(events))
        now = time.monotonic()
        if now - self._last_warning >= LOG_EVERY_S:
            self._last_warning = now
            log.warning(
                "event sink %s buffer full (%d events): dropped %d events (%d dropped so far)",
                name,
                self.buffer,
                len(events),
                self.dropped,
            )

    @contextmanager
    def _draining(self) -> Iterator[None]:
        """Around a buffer's consumer: `close` gives it until the drain deadline and waits."""
        drained = anyio.Event()
        self._drained.append(drained)
        try:
            with anyio.CancelScope() as scope:
                self._scopes.append(scope)
                yield
        finally:
            drained.set()

    async def _deliver(self, feed: _Feed, sink: EventSink) -> None:
        # Only a sink that takes batches gets operations merged: one handled event by event
        # frees its buffer space operation by operation.
        most = MERGE_EVENTS if getattr(sink, "handle_batch", None) is not None else 1
        with self._draining():
            async for batch in feed.batches(most):
                await _hand_over(feed.name, sink, batch)

    async def _publish(self, shared: EventLog, feed: _Feed) -> None:
        """Append this node's events to the shared log, as many per transaction as are waiting."""
        with self._draining():
            async for batch in feed.batches(LOG_BATCH):
                await self._append(shared, [event.to_wire() for event in batch])

    async def _append(self, shared: EventLog, batch: list[dict[str, Any]]) -> None:
        """Append ``batch``, trying again (in order: later batches wait) when the log's storage
        fails: "cluster" and "once" sinks read only the log, on this node too, so a batch not
        appended is an event no such sink ever sees. A failure whose commit went through
        after all appends the batch twice: sinks may see those events twice, never not at all."""
        for attempt in range(APPEND_ATTEMPTS):
            try:
                await shared.append(batch, int(time.time() * 1000))
                return
            except Exception as exc:  # noqa: BLE001 - tried again, then counted and logged
                if attempt + 1 < APPEND_ATTEMPTS:
                    log.warning(
                        "could not append %d events to the shared event log (%r); trying again", len(batch), exc
                    )
                    await anyio.sleep(0.1 * 2**attempt)
                    continue
                self.dropped += len(batch)
                if self.metrics is not None:
                    self.metrics.inc("events_dropped_total", "event-log", amount=len(batch))
                log.exception("could not append %d events to the shared event log: dropped", len(batch))

    async def _read_log(self, shared: EventLog, after: int) -> None:
        """Feed ``"cluster"`` sinks from the shared log: every node's events, each once.

        While every such sink is ``idle`` (a WebSocket hub with no client), the log is not
        read: where it ends is noted at most every `LOG_POLL_S`, and a sink that stops being
        idle gets the events from that note on (a few from just before it began, none lost)."""
        noted = -math.inf
        while True:
            if self._following_idle():
                if time.monotonic() - noted >= LOG_POLL_S:
                    noted = time.monotonic()
                    try:
                        end = await shared.last_seq()
                    except Exception:  # noqa: BLE001 - the database may come back
                        log.exception("reading the end of the shared event log failed")
                    else:
                        # Only if still idle: a sink that began wanting events while the end
                        # was read must get what was appended meanwhile.
                        if self._following_idle():
                            after = max(after, end)
                await shared.wait(LOG_POLL_S)
                continue
            try:
                batch = await shared.read(after, LOG_BATCH)
            except Exception:  # noqa: BLE001 - the database may come back
                log.exception("reading the shared event log failed")
                batch = []
            if batch:
                after = batch[-1][0]
                events = [event for _, payload in batch if (event := _parse(payload)) is not None]
                for feed in self._following:
                    self._offer(feed, events)
            if len(batch) < LOG_BATCH:
                await shared.wait(LOG_POLL_S)

    def _following_idle(self) -> bool:
        return all(getattr(sink, "idle", False) for sink in self._following_sinks)

    async def _consume(self, shared: EventLog, sink: EventSink) -> None:
        """Feed a ``"once"`` sink from the shared log: claim the next events under its
        cluster-wide cursor (committed before they are handed over, so no event is handed out
        twice, even if this node stops half-way through a batch), then hand them over."""
        name = sink_name(sink)
        while True:
            try:
                batch = await shared.claim(f"sink:{name}", LOG_BATCH)
            except Exception:  # noqa: BLE001 - the database may come back
                log.exception("claiming events from the shared log for sink %s failed", name)
                batch = []
            if events := [event for _, payload in batch if (event := _parse(payload)) is not None]:
                await _hand_over(name, sink, events)
            if len(batch) < LOG_BATCH:
                await shared.wait(LOG_POLL_S)
                while getattr(sink, "idle", False):  # it would do nothing: claim later, in bulk
                    await shared.wait(LOG_POLL_S)

    async def close(self) -> None:
        """Stop accepting events; sinks get up to ``DRAIN_ON_CLOSE_S`` to finish their buffer
        and then their own work (an optional ``aclose()``, awaited until the same deadline);
        then their ``run`` tasks are cancelled."""
        for scope in self._followers:
            scope.cancel()
        feeds, self._feeds = self._feeds + self._following, []
        for feed in feeds:
            feed.close()
        deadline = anyio.current_time() + DRAIN_ON_CLOSE_S
        for scope in self._scopes:
            scope.deadline = deadline
        with anyio.move_on_after(DRAIN_ON_CLOSE_S + 1):
            for drained in self._drained:
                await drained.wait()
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
            for sink in self.sinks:
                if callable(finish := getattr(sink, "aclose", None)):
                    try:
                        await finish()
                    except Exception:  # noqa: BLE001 - the others still close
                        log.exception("event sink %s failed to close", sink_name(sink))
        for scope in self._runners:
            scope.cancel()


async def _hand_over(name: str, sink: EventSink, events: Sequence[Event]) -> None:
    """Events to ``sink``, in order: in one call to its ``handle_batch`` when it has one (a
    batch of 1,000 acks is then one call, not 1,000), else to ``handle`` one by one."""
    if (handle_batch := getattr(sink, "handle_batch", None)) is not None:
        try:
            await handle_batch(events)
        except Exception:  # noqa: BLE001 - one bad sink must not stop the others
            log.exception("event sink %s failed on a batch of %d events", name, len(events))
        return
    for event in events:
        try:
            await sink.handle(event)
        except Exception:  # noqa: BLE001 - one bad sink must not stop the others
            log.exception("event sink %s failed on %s", name, event.event)


def _parse(payload: dict[str, Any]) -> Event | None:
    try:
        return Event.from_wire(payload)
    except ValueError:
        log.warning("skipping a malformed event in the shared log: %.200r", payload)
        return None


# -- the events of one change, built after it committed ---------------------------------------


def job_event(name: EventName, done: Modified, now_ms: int, data: dict[str, Any] | None = None) -> Event:
    assert done.queue is not None  # a changed job's queue is known
    return Event(name, done.id, done.queue, ms_to_dt(now_ms), data or {})


def pushed_event(job: Job) -> Event:
    return Event("job.pushed", job.id, job.queue, job.created_at, {})


def spawn_events(done: Modified) -> list[Event]:
    return [pushed_event(job) for job in done.spawned]


def cascade_events(done: Modified, now_ms: int) -> list[Event]:
    """``job.dlq`` for each blocked descendant that ``done`` took down with it."""
    at = ms_to_dt(now_ms)
    return [Event("job.dlq", job_id, queue, at, {"cause": str(done.id)}) for job_id, queue in done.cascaded]


def failure_events(done: Modified, plan: lifecycle.FailurePlan, error: str, now_ms: int) -> list[Event]:
    assert done.before is not None
    events = [
        job_event(
            "job.failed",
            done,
            now_ms,
            {"error": error, "attempt": done.before.attempt + 1, "will_retry": plan.will_retry},
        )
    ]
    if plan.state is JobState.DLQ:
        events.append(job_event("job.dlq", done, now_ms))
    return events
