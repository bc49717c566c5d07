"""The objects plugins hand back from hooks (besides `Storage`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from .models import Event, Job


@runtime_checkable
class EventSink(Protocol):
    """Receives lifecycle events after commit, one at a time, from its own task."""

    async def handle(self, event: Event) -> None: ...


@runtime_checkable
class ProtocolServer(Protocol):
    """A network front end run in server mode.

    ``serve`` runs until cancelled; it calls ``ready(address)`` once it listens, so the host
    can log one line per listener.
    """

    name: str

    async def serve(self, ready: Callable[[str], None]) -> None: ...


@runtime_checkable
class Worker(Protocol):
    """Runs one job for an engine; the return value becomes the job's result."""

    async def process(self, job: Job) -> Any: ...


EngineFactory = Callable[[], "Worker | Awaitable[Worker]"]
