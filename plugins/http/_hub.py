"""`EventHub`: the ``http`` plugin's event sink, feeding WebSocket clients.

Its scope is ``"cluster"``: with several nodes on one PostgreSQL, a client connected to any
node sees every node's events. Each client has a queue of ``websocket_buffer`` events; a client
that falls further behind is disconnected (close code 1013) rather than buffered without bound.
Kept free of Starlette imports: the sink exists in embedded mode too, idle until a server runs.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from conveyor import _limits as limits
from conveyor.errors import ConveyorError, ValidationError
from conveyor.models import Event, normalize_event_name

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from conveyor import Conveyor

TOO_SLOW = 1013  # "try again later": the client could not keep up
BAD_REQUEST = 1008  # policy violation: bad filters, or an origin not allowed

_HUBS: weakref.WeakKeyDictionary[Conveyor, EventHub] = weakref.WeakKeyDictionary()


def hub_for(app: Conveyor) -> EventHub:
    """The hub the ``http`` plugin gave ``app`` as a sink (or a fresh, unfed one if the
    sinks hook was not run, e.g. an API built over an app opened without the plugin)."""
    hub = _HUBS.get(app)
    if hub is None:
        hub = _HUBS[app] = EventHub(app.settings.websocket_buffer, app.settings.websocket_origins)
    return hub


@dataclass(eq=False)
class _Subscriber:
    stream: MemoryObjectSendStream[str]
    events: frozenset[str]
    queues: frozenset[str]
    too_slow: bool = False

    def wants(self, event: Event) -> bool:
        return (not self.events or event.event in self.events) and (not self.queues or event.queue in self.queues)


class EventHub:
    name = "websocket"
    scope = "cluster"

    def __init__(self, buffer: int, origins: Sequence[str] = ()) -> None:
        self.buffer = buffer
        self.origins = frozenset(origin.rstrip("/").lower() for origin in origins)
        self.subscribers: set[_Subscriber] = set()

    @property
    def idle(self) -> bool:
        """No client: with several nodes, this node need not read the shared event log."""
        return not self.subscribers

    async def handle_batch(self, events: Sequence[Event]) -> None:
        if self.subscribers:
            for event in events:
                await self.handle(event)

    async def handle(self, event: Event) -> None:
        if not self.subscribers:
            return
        frame: str | None = None
        for sub in list(self.subscribers):
            if not sub.wants(event):
                continue
            frame = frame or json.dumps(event.to_wire(), separators=(",", ":"))
            try:
                sub.stream.send_nowait(frame)
            except anyio.WouldBlock:
                sub.too_slow = True
                sub.stream.close()
                self.subscribers.discard(sub)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.subscribers.discard(sub)

    async def serve(self, websocket: WebSocket) -> None:
        """One client: check its filters, subscribe, accept, then stream frames until either side
        stops."""
        from starlette.websockets import WebSocketDisconnect

        if not self._origin_allowed(websocket):
            await websocket.close(BAD_REQUEST)  # before the handshake: the browser sees 403
            return
        try:
            events, queues = _filters(websocket)
        except ConveyorError as exc:
            await websocket.accept()
            await websocket.send_text(json.dumps({"ok": False, "error": exc.to_wire()}))
            await websocket.close(BAD_REQUEST, exc.message[:120])
            return
        send, receive = anyio.create_memory_object_stream[str](self.buffer)
        sub = _Subscriber(send, events, queues)
        self.subscribers.add(sub)  # before the handshake ends: an event right after it is not missed
        try:
            await websocket.accept()
            async with anyio.create_task_group() as tg:

                async def watch_client() -> None:
                    try:
                        while True:
                            await websocket.receive_text()  # frames from the client are ignored
                    except (WebSocketDisconnect, RuntimeError):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_client)
                async with receive:
                    async for frame in receive:
                        await websocket.send_text(frame)
                if sub.too_slow:
                    await websocket.close(TOO_SLOW, f"too slow: more than {self.buffer} events behind")
                tg.cancel_scope.cancel()
        except* (WebSocketDisconnect, OSError, RuntimeError):
            pass  # the client went away while we were sending (Starlette: RuntimeError after close)
        finally:
            self.subscribers.discard(sub)
            send.close()

    def _origin_allowed(self, websocket: WebSocket) -> bool:
        """A browser names the page's origin; other clients send none. Only the server's own
        origin (the dashboard) and ``websocket_origins`` may read the event stream: browsers let
        any page open a WebSocket anywhere, with no token when auth is off."""
        origin = websocket.headers.get("origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        own = urlsplit(origin).netloc == (websocket.headers.get("host") or "").lower()
        return own or origin in self.origins


def _filters(websocket: WebSocket) -> tuple[frozenset[str], frozenset[str]]:
    def split(name: str) -> list[str]:
        return [part.strip() for part in websocket.query_params.get(name, "").split(",") if part.strip()]

    events = set()
    for name in split("events"):
        try:
            events.add(normalize_event_name(name))
        except ValueError as exc:
            raise ValidationError(f"events: {exc}", field="events") from None
    queues = split("queues")
    for queue in queues:
        limits.check_queue_name(queue, "queues")  # a name no queue can have would never match
    return frozenset(events), frozenset(queues)
