"""Event dispatch: committed lifecycle events fan out to sinks without slowing the queue.

`emit` never awaits: each sink has a bounded buffer drained by its own task. A full buffer
drops the event for that sink only, counts it and logs (at most once per ``LOG_EVERY_S``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .interfaces import EventSink
from .models import Event

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
