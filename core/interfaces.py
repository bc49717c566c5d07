"""The objects plugins hand back from hooks (besides `Storage`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from .models import Event, Job

EVENT_SCOPES = ("node", "cluster", "once")


@runtime_checkable
class EventSink(Protocol):
    """Receives lifecycle events after commit, from its own task: one at a time through
    ``handle``, or, when the sink also has ``async handle_batch(events)``, what is waiting in
    one call (whole operations, in order: a sink that counts or forwards does one thing per
    batch).

    Two optional attributes: ``name`` (default: the class name; it names the sink in logs and
    metrics and, for ``"once"``, its cluster-wide cursor) and ``scope``, which matters only
    when several nodes share the storage (PostgreSQL):

    - ``"node"`` (default): the events of changes made through this process (metrics, logs);
    - ``"cluster"``: every node's events, each once per instance (live feeds: WebSocket);
    - ``"once"``: every node's events, each delivered to exactly one node's instance of the
      sink with this name (side effects that must not repeat: webhooks).

    A ``"once"`` or ``"cluster"`` sink may have an ``idle`` property, true while it would do
    nothing with events (no webhook registered, no WebSocket client): a ``"once"`` sink's
    events are then claimed in bulk, not on every append; while every ``"cluster"`` sink of a
    node is idle, the node does not read the shared log at all.
    """

    async def handle(self, event: Event) -> None: ...


@runtime_checkable
class ProtocolServer(Protocol):
    """A network front end run in server mode (``conveyor serve``).

    ``serve`` listens, calls ``ready(address)`` once it does (the host logs one line per
    listener), and runs until ``shutdown`` is called: then it stops accepting, lets in-flight
    requests finish and returns. Cancelling ``serve`` stops it at once. ``shutdown`` may be
    called before ``serve`` has started listening, and more than once.
    """

    name: str

    async def serve(self, ready: Callable[[str], None]) -> None: ...

    async def shutdown(self) -> None: ...


@runtime_checkable
class Worker(Protocol):
    """Runs one job for an engine; the return value becomes the job's result."""

    async def process(self, job: Job) -> Any: ...


EngineFactory = Callable[[], "Worker | Awaitable[Worker]"]
