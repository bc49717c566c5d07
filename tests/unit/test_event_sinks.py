"""Event sink plumbing in process: the WebSocket hub drops a client that falls behind instead
of buffering without bound, filters per client, and a sink's scope is validated at open."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import anyio
import pytest

from conveyor import Conveyor, Event, PluginError, hookimpl
from conveyor.plugins.http._hub import EventHub, _Subscriber

pytestmark = pytest.mark.anyio


def event(name: str = "job.pushed", queue: str = "q") -> Event:
    return Event(event=name, job_id=uuid4(), queue=queue, timestamp=datetime.now(UTC))  # type: ignore[arg-type]


async def test_a_client_that_falls_behind_is_dropped_and_others_keep_receiving() -> None:
    hub = EventHub(buffer=3)
    slow_send, slow_receive = anyio.create_memory_object_stream[str](3)
    fast_send, fast_receive = anyio.create_memory_object_stream[str](100)
    slow = _Subscriber(slow_send, frozenset(), frozenset())
    fast = _Subscriber(fast_send, frozenset(), frozenset())
    hub.subscribers |= {slow, fast}
    for _ in range(4):
        await hub.handle(event())
    assert slow.too_slow and slow not in hub.subscribers
    assert fast in hub.subscribers and not fast.too_slow
    assert len([frame async for frame in slow_receive]) == 3  # what it had, then the end
    await hub.handle(event())
    fast_send.close()
    assert len([frame async for frame in fast_receive]) == 5


async def test_each_client_gets_only_what_its_filters_ask_for() -> None:
    hub = EventHub(buffer=10)
    send, receive = anyio.create_memory_object_stream[str](10)
    hub.subscribers.add(_Subscriber(send, frozenset({"job.completed"}), frozenset({"a"})))
    for name, queue in [("job.pushed", "a"), ("job.completed", "b"), ("job.completed", "a")]:
        await hub.handle(event(name, queue))
    send.close()
    frames = [json.loads(frame) async for frame in receive]
    assert [(f["event"], f["queue"]) for f in frames] == [("job.completed", "a")]


class BadScope:
    scope = "galaxy"

    async def handle(self, event: Event) -> None:
        pass


class BadScopePlugin:
    @hookimpl
    def conveyor_event_sinks(self, app: Conveyor) -> BadScope:
        return BadScope()


async def test_an_unknown_sink_scope_is_refused_when_the_app_opens() -> None:
    plugin = BadScopePlugin()
    app = Conveyor("sqlite:///:memory:", plugins=[plugin], plugin_autoload=False, maintenance=False)
    try:
        with pytest.raises(PluginError, match="scope 'galaxy'"):
            await app.open()
    finally:
        app.pm.unregister(plugin)


class Gated:
    """A sink that handles one event each time the test opens its gate."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.seen: list[Event] = []

    async def handle(self, event: Event) -> None:
        await self.gate.wait()
        self.gate = anyio.Event()
        self.seen.append(event)

    async def release(self, until: int) -> None:
        while len(self.seen) < until:
            self.gate.set()
            await anyio.sleep(0)


async def test_a_slow_sink_frees_buffer_space_operation_by_operation() -> None:
    """Operations waiting for a sink that handles events one by one are not merged: each one
    handled frees its room at once, so a full buffer takes a new event as soon as one is done."""
    from conveyor.events import EventDispatcher

    sink = Gated()
    dispatcher = EventDispatcher([sink], buffer=4)
    async with anyio.create_task_group() as tg:
        dispatcher.start(tg)
        for _ in range(4):
            dispatcher.emit([event()])
        dispatcher.emit([event()])  # the buffer is full: dropped
        assert dispatcher.dropped == 1
        await sink.release(until=1)
        dispatcher.emit([event()])  # one operation handled: room for one more
        assert dispatcher.dropped == 1
        await sink.release(until=5)
        await dispatcher.close()
    assert len(sink.seen) == 5


def test_an_event_from_the_shared_log_is_validated() -> None:
    """Events read back from the shared event log (PostgreSQL) are checked field by field: the
    round trip gives the same event, and anything else is refused, not handed to sinks."""
    sent = Event("job.dlq", uuid4(), "q", datetime.now(UTC), {"cause": "x"})
    assert Event.from_wire(json.loads(json.dumps(sent.to_wire()))) == sent
    plain = Event("job.pushed", uuid4(), "q", datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC))
    assert Event.from_wire(plain.to_wire()) == plain and "data" not in plain.to_wire()
    good = plain.to_wire()
    for broken in ({**good, "event": "job.exploded"}, {**good, "job_id": "nope"}, {**good, "timestamp": "later"},
                   {**good, "data": [1]}, {k: v for k, v in good.items() if k != "queue"}, "text"):  # fmt: skip
        with pytest.raises(ValueError):
            Event.from_wire(broken)
