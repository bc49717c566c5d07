"""Event dispatch: committed lifecycle events fan out to sinks without slowing the queue.

`emit` never awaits: each sink has a bounded buffer drained by its own task. A full buffer
drops the event for that sink only, counts it and logs (at most once per ``LOG_EVERY_S``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import lifecycle
from .interfaces import EventSink
from .lifecycle import ms_to_dt
from .models import Event, JobState, trusted
from .storage import Modified

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0
DRAIN_ON_CLOSE_S = 5.0


class EventDispatcher:
    def __init__(self, sinks: Sequence[EventSink], buffer: int) -> None:
        self.sinks = list(sinks)
        self.buffer = buffer
        self.dropped = 0
        self._streams: list[MemoryObjectSendStream[Event]] = []
        self._scopes: list[anyio.CancelScope] = []
        self._last_warning = 0.0

    @property
    def active(self) -> bool:
        """Whether anyone listens; callers skip building events when not."""
        return bool(self._streams)

    def start(self, tg: TaskGroup) -> None:
        for sink in self.sinks:
            send, receive = anyio.create_memory_object_stream[Event](self.buffer)
            self._streams.append(send)
            tg.start_soon(self._deliver, sink, receive, name=f"conveyor-sink:{type(sink).__name__}")

    def emit(self, events: Iterable[Event]) -> None:
        for stream in self._streams:
            for event in events:
                try:
                    stream.send_nowait(event)
                except anyio.WouldBlock:
                    self._drop(event)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass

    def _drop(self, event: Event) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= LOG_EVERY_S:
            self._last_warning = now
            log.warning(
                "event sink buffer full (%d): dropped %s for job %s (%d dropped so far)",
                self.buffer,
                event.event,
                event.job_id,
                self.dropped,
            )

    async def _deliver(self, sink: EventSink, receive: MemoryObjectReceiveStream[Event]) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.append(scope)
            async with receive:
                async for event in receive:
                    try:
                        await sink.handle(event)
                    except Exception:  # noqa: BLE001 - one bad sink must not stop the others
                        log.exception("event sink %r failed on %s", sink, event.event)

    async def close(self) -> None:
        """Stop accepting events; sinks get up to ``DRAIN_ON_CLOSE_S`` to finish the buffer."""
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.close()
        deadline = anyio.current_time() + DRAIN_ON_CLOSE_S
        for scope in self._scopes:
            scope.deadline = deadline


# -- the events of one change, built after it committed ---------------------------------------


def job_event(name: str, done: Modified, now_ms: int, data: dict[str, Any] | None = None) -> Event:
    return trusted(
        Event,
        {"event": name, "job_id": done.id, "queue": done.queue, "timestamp": ms_to_dt(now_ms), "data": data or {}},
    )


def spawn_events(done: Modified) -> list[Event]:
    return [
        trusted(
            Event,
            {"event": "job.pushed", "job_id": job.id, "queue": job.queue, "timestamp": job.created_at, "data": {}},
        )
        for job in done.spawned
    ]


def cascade_events(done: Modified, now_ms: int) -> list[Event]:
    """``job.dlq`` for each blocked descendant that ``done`` took down with it."""
    at = ms_to_dt(now_ms)
    return [
        trusted(
            Event,
            {"event": "job.dlq", "job_id": job_id, "queue": queue, "timestamp": at, "data": {"cause": str(done.id)}},
        )
        for job_id, queue in done.cascaded
    ]


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
