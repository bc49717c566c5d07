"""Hook specifications: the four ways a plugin extends Conveyor.

Every hook receives the host object ``app`` (the `Conveyor` instance), so signatures can grow
without breaking plugins: pluggy passes only the arguments an implementation names. Hooks are
synchronous factories that return objects with async methods; none is async itself.

Implement a hook by decorating a module-level function (or method) with `hookimpl`::

    from conveyor import hookimpl

    @hookimpl
    def conveyor_event_sinks(app):
        return MySink()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .app import Conveyor
    from .interfaces import EventSink, ProtocolServer
    from .storage import Storage
    from .workers import WorkerRegistry

PROJECT = "conveyor"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def conveyor_storage(app: Conveyor, url: str) -> Storage | None:
    """Give a `Storage` for ``url``, or None if this plugin does not handle its scheme.

    Called once per `Conveyor` when it opens, with the configured storage URL (for example
    ``sqlite:///./conveyor.db`` or ``postgresql://host/db``). First result wins: the first
    non-None return is used and later implementations are not called. Return a *closed*
    storage: the kernel calls ``await storage.open()`` itself. May raise `ConveyorError`
    (typically `ValidationError`) when the URL is for this plugin but malformed; if no plugin
    returns a storage, opening fails with `PluginError` naming the URL's scheme.
    """


@hookspec
def conveyor_protocols(app: Conveyor) -> ProtocolServer | Sequence[ProtocolServer] | None:
    """Give the protocol servers (HTTP, TCP, ...) to run in server mode.

    Called once when server mode starts (`Conveyor.protocol_servers`), after storage is
    open. Every implementation is called; each may return one `ProtocolServer`, a sequence of
    them, or None. Servers are started concurrently and cancelled on shutdown. Must not raise
    for a configuration that simply does not enable the server: return None instead.
    """


@hookspec
def conveyor_engines(app: Conveyor, registry: WorkerRegistry) -> None:
    """Register worker engine factories with ``registry``.

    Called once per `Conveyor` when it opens, with its `WorkerRegistry`. Every implementation
    is called; the return value is ignored. Use ``registry.register_engine_factory(engine_id,
    factory)`` and optionally ``registry.route_queue_to_engine(queue, engine_id)``. Raises
    `PluginError` (from the registry) on a duplicate or malformed engine id, which aborts
    opening: a broken engine is never skipped silently.
    """


@hookspec
def conveyor_event_sinks(app: Conveyor) -> EventSink | Sequence[EventSink] | None:
    """Give sinks that receive every lifecycle `Event` (webhooks, metrics, WebSocket, ...).

    Called once per `Conveyor` when it opens. Every implementation is called; each may return
    one `EventSink`, a sequence of them, or None. Events reach a sink after the change they
    report is committed, in commit order per job, from a background task with a bounded
    buffer: a slow sink never slows a push or ack, and when its buffer is full further events
    for that sink are counted as dropped and logged. Exceptions raised by ``handle`` are
    logged and do not stop delivery of later events. A sink's optional ``scope`` (``"node"``,
    ``"cluster"`` or ``"once"``, see `EventSink`) chooses which nodes' events it gets when
    several share one PostgreSQL; an unknown scope raises `PluginError` when the app opens.
    """
