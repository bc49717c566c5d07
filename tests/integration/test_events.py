"""Event dispatch to sinks registered through the event-sink hook."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from conveyor import Conveyor, Event, hookimpl

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.seen = anyio.Event()
        self.expect = 0

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        if len(self.events) >= self.expect:
            self.seen.set()

    async def wait_for(self, n: int) -> list[Event]:
        self.expect = n
        if len(self.events) < n:
            self.seen = anyio.Event()
            with anyio.fail_after(30):
                await self.seen.wait()
        return self.events


class SinkPlugin:
    def __init__(self, *sinks: object) -> None:
        self.sinks = list(sinks)

    @hookimpl
    def conveyor_event_sinks(self, app: Conveyor) -> list[object]:
        return self.sinks


async def test_every_lifecycle_event_reaches_the_sink(storage_url: str, clock: FakeClock) -> None:
    sink = Recorder()
    async with Conveyor(
        storage_url, clock=clock, plugins=[SinkPlugin(sink)], maintenance=False, plugin_autoload=False
    ) as app:
        done = await app.push("q", "a")
        await app.pull("q")
        await app.progress(done, 40, "half")
        await app.ack(done)
        dead = await app.push("q", "b", max_attempts=1)
        await app.pull("q")
        await app.fail(dead, "bad")
        gone = await app.push("q", "c")
        await app.cancel(gone)
        stalled = await app.push("q", "d", max_attempts=1)
        await app.pull("q")
        clock.advance(30_001)
        await app.run_maintenance()
        events = await sink.wait_for(11)
    names = [(e.event, e.job_id) for e in events]
    assert names == [
        ("job.pushed", done), ("job.progress", done), ("job.completed", done),
        ("job.pushed", dead), ("job.failed", dead), ("job.dlq", dead),
        ("job.pushed", gone), ("job.cancelled", gone),
        ("job.pushed", stalled), ("job.failed", stalled), ("job.dlq", stalled),
    ]  # fmt: skip
    assert {e.queue for e in events} == {"q"}
    assert events[1].data == {"progress": 40, "message": "half"}
    assert events[4].data["error"] == "bad" and events[4].data["will_retry"] is False
    assert "stalled" in events[9].data["error"]
    assert events[9].data["attempt"] == events[4].data["attempt"] == 1  # a sweep reports as `fail` does


async def test_a_sweep_s_failure_of_a_job_removed_on_fail_still_names_its_error(
    storage_url: str, clock: FakeClock
) -> None:
    sink = Recorder()
    async with Conveyor(
        storage_url, clock=clock, plugins=[SinkPlugin(sink)], maintenance=False, plugin_autoload=False
    ) as app:
        job_id = await app.push("q", "t", max_attempts=1, timeout_ms=1_000, remove_on_fail=True)
        await app.pull("q")
        clock.advance(1_001)
        await app.run_maintenance()
        assert await app.get(job_id) is None  # removed: its events are all that is left
        events = await sink.wait_for(3)
    assert [e.event for e in events] == ["job.pushed", "job.failed", "job.dlq"]
    assert events[1].data == {"error": "timed out after 1000 ms", "attempt": 1, "will_retry": False}


class Stuck:
    """A sink that never finishes: the queue must not notice."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, event: Event) -> None:
        self.calls += 1
        await anyio.sleep_forever()


class Broken:
    async def handle(self, event: Event) -> None:
        raise RuntimeError("sink bug")


async def test_a_stuck_or_broken_sink_never_blocks_the_queue(file_url: str) -> None:
    stuck, broken, healthy = Stuck(), Broken(), Recorder()
    plugin = SinkPlugin(stuck, broken, healthy)
    async with Conveyor(file_url, plugins=[plugin], event_buffer=5, maintenance=False, plugin_autoload=False) as app:
        for i in range(40):
            await app.push("q", f"j{i}")
        await healthy.wait_for(5)
        assert stuck.calls == 1
        assert app.events.dropped >= 40 - 5 - 1  # the stuck sink's overflow, counted
    # close() gave the stuck sink a bounded grace period and returned


async def test_sink_that_is_not_a_sink_is_refused(file_url: str) -> None:
    from conveyor import PluginError

    app = Conveyor(file_url, plugins=[SinkPlugin(object())], plugin_autoload=False)
    with pytest.raises(PluginError, match="EventSink"):
        await app.open()


class BatchRecorder(Recorder):
    """A sink with ``handle_batch``: each operation's events arrive in one call."""

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.batches: list[list[Event]] = []
        self.fail_first = fail_first

    async def handle(self, event: Event) -> None:
        raise AssertionError("handle must not be called when handle_batch exists")

    async def handle_batch(self, events: list[Event]) -> None:
        self.batches.append(list(events))
        if self.fail_first and len(self.batches) == 1:
            raise RuntimeError("sink bug")
        for event in events:
            await Recorder.handle(self, event)


async def test_a_sink_with_handle_batch_gets_each_operation_in_one_call(file_url: str) -> None:
    sink, broken = BatchRecorder(), BatchRecorder(fail_first=True)
    async with Conveyor(file_url, plugins=[SinkPlugin(sink, broken)], maintenance=False, plugin_autoload=False) as app:
        ids = await app.push_batch("q", [{"name": f"j{i}"} for i in range(30)])
        with anyio.fail_after(30):
            while not broken.batches:  # its first call (which raises) holds only the pushes
                await anyio.sleep(0.01)
        jobs = await app.pull("q", 30)
        await app.ack_batch([{"id": job.id} for job in jobs])
        events = await sink.wait_for(60)
        await broken.wait_for(30)  # its first batch raised; the next still came
    # whole operations per call (two may come together if the sink was busy), in order
    assert [len(batch) for batch in sink.batches] in ([30, 30], [60])
    assert [(e.event, e.job_id) for e in events] == [("job.pushed", i) for i in ids] + [
        ("job.completed", i) for i in ids
    ]
    assert len({e.timestamp for e in events[30:]}) == 1
    assert [len(batch) for batch in broken.batches] == [30, 30] and len(broken.events) == 30


async def test_a_sink_keeps_up_with_many_concurrent_producers(file_url: str) -> None:
    """A sink runs once per pass of the event loop, while each pass may queue an operation per
    producer: it takes everything waiting at once, so a small buffer still drops nothing."""
    sink = Recorder()
    async with Conveyor(
        file_url, plugins=[SinkPlugin(sink)], event_buffer=100, sqlite_synchronous="NORMAL",
        maintenance=False, plugin_autoload=False,
    ) as app:  # fmt: skip

        async def producer(k: int) -> None:
            for i in range(60):
                await app.push("q", f"{k}-{i}")

        async with anyio.create_task_group() as tg:
            for k in range(16):
                tg.start_soon(producer, k)
        events = await sink.wait_for(960)
        assert app.events.dropped == 0
    assert len(events) == 960 and len({e.job_id for e in events}) == 960


class IdleRecorder(Recorder):
    """A ``"cluster"`` sink that says when it would do nothing with events."""

    scope = "cluster"

    def __init__(self) -> None:
        super().__init__()
        self.idle = True


@pytest.mark.postgres
async def test_a_node_whose_cluster_sinks_are_idle_does_not_read_the_shared_log(pg_schema: str) -> None:
    """An idle sink (a WebSocket hub with no client) costs no reads of the shared log; once
    it stops being idle it gets every event from then on, the other node's included."""
    follower = IdleRecorder()
    async with (
        Conveyor(pg_schema, plugins=[SinkPlugin(follower)], plugin_autoload=False, maintenance=False) as watching,
        Conveyor(pg_schema, plugin_autoload=False, maintenance=False) as other,
    ):
        reads = 0
        log = watching.storage.event_log
        assert log is not None
        read = log.read

        async def counted(after: int, limit: int) -> Any:
            nonlocal reads
            reads += 1
            return await read(after, limit)

        log.read = counted  # type: ignore[method-assign]
        for i in range(5):
            await other.push("idle", f"unseen-{i}")
        await anyio.sleep(0.5)  # time for the wake-ups the appends sent
        assert reads == 0 and follower.events == []
        follower.idle = False
        seen = await other.push("idle", "seen")
        events = await follower.wait_for(1)
        assert reads > 0 and seen in [event.job_id for event in events]


@pytest.mark.postgres
async def test_a_sink_that_stops_being_idle_while_the_log_end_is_read_misses_nothing(pg_schema: str) -> None:
    """The end of the log read while a sink began wanting events must not be taken as a
    starting point: what was appended meanwhile would never be read."""
    follower = IdleRecorder()
    async with (
        Conveyor(pg_schema, plugins=[SinkPlugin(follower)], plugin_autoload=False, maintenance=False) as watching,
        Conveyor(pg_schema, plugin_autoload=False, maintenance=False) as other,
    ):
        log = watching.storage.event_log
        assert log is not None
        last_seq, reading = log.last_seq, anyio.Event()

        async def slow_last_seq() -> int:
            reading.set()
            await anyio.sleep(1)  # a slow round trip: the event below commits before the end is read
            return await last_seq()

        log.last_seq = slow_last_seq  # type: ignore[method-assign]
        with anyio.fail_after(30):
            await reading.wait()
        follower.idle = False
        seen = await other.push("race", "during")
        assert seen in [event.job_id for event in await follower.wait_for(1)]


class ClusterRecorder(Recorder):
    """A ``"cluster"`` sink: it gets events from the shared log only, this node's too."""

    scope = "cluster"


@pytest.mark.postgres
async def test_killed_connections_lose_no_push_and_no_event(pg_schema: str) -> None:
    """PostgreSQL ends every connection of the node (an operator, a restart): the next push
    runs on a new connection (nothing was committed on the dead one), and its event, appended
    to the shared log, still reaches a sink that reads the log."""
    import psycopg

    from tests.conftest import PG_URL

    sink = ClusterRecorder()
    async with Conveyor(pg_schema, plugins=[SinkPlugin(sink)], plugin_autoload=False, maintenance=False) as app:
        first = await app.push("q", "a")
        await sink.wait_for(1)
        name = f"conveyor {app.storage.schema}"  # type: ignore[attr-defined]
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        second = await app.push("q", "b")
        third = await app.push("q", "c")
        events = await sink.wait_for(3)
        assert app.events.dropped == 0
    assert [e.job_id for e in events] == [first, second, third]


@pytest.mark.postgres
async def test_a_failed_append_to_the_shared_log_is_tried_again(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's change committed; its event must still reach the sinks that read the log."""
    from conveyor import StorageError

    sink = ClusterRecorder()
    async with Conveyor(pg_schema, plugins=[SinkPlugin(sink)], plugin_autoload=False, maintenance=False) as app:
        log = app.storage.event_log
        assert log is not None
        append, failures = log.append, [StorageError("connection lost"), StorageError("connection lost")]

        async def flaky(batch: Any, now_ms: int) -> None:
            if failures:
                raise failures.pop()
            await append(batch, now_ms)

        monkeypatch.setattr(log, "append", flaky)
        job_id = await app.push("q", "a")
        events = await sink.wait_for(1)
        assert app.events.dropped == 0 and not failures
    assert [e.job_id for e in events] == [job_id]
