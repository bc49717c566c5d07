"""Each hookspec has a test of its own here (`test_hook_<name>`), checked by test_docs.py.

Plugins are registered for one app and unregistered in ``finally``, as a third party would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from conveyor import (
    Conveyor,
    Event,
    Job,
    JobState,
    PluginError,
    ProtocolServer,
    ValidationError,
    WorkerRegistry,
    hookimpl,
)
from conveyor.plugins.sql.sqlite import SqliteStorage

pytestmark = pytest.mark.anyio


class MemoStorePlugin:
    """A third-party storage for ``memo://`` URLs (backed by in-memory SQLite)."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    @hookimpl
    def conveyor_storage(self, app: Conveyor, url: str) -> SqliteStorage | None:
        if not url.startswith("memo://"):
            return None
        self.urls.append(url)
        return SqliteStorage("sqlite:///:memory:")


async def test_hook_conveyor_storage() -> None:
    plugin = MemoStorePlugin()
    app = Conveyor("memo://anything", plugins=[plugin], plugin_autoload=False, maintenance=False)
    try:
        async with app:
            job_id = await app.push("q", "j")
            assert (await app.get(job_id)).state is JobState.WAITING  # type: ignore[union-attr]
        assert plugin.urls == ["memo://anything"]
    finally:
        app.pm.unregister(plugin)
    with pytest.raises(ValidationError, match="'memo'") as err:
        await Conveyor("memo://x", plugin_autoload=False).open()
    assert err.value.field == "storage"


async def test_blocking_the_builtin_sql_plugin_leaves_no_storage() -> None:
    app = Conveyor("sqlite:///:memory:", disable_plugins=["sql"], plugin_autoload=False)
    assert app.pm.get_plugin("sql") is None and app.pm.is_blocked("sql")
    with pytest.raises(ValidationError, match="no storage plugin handles 'sqlite'"):
        await app.open()


class FakeServer:
    name = "fake"

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.stopping = anyio.Event()

    async def serve(self, ready: Callable[[str], None]) -> None:
        ready("fake://here")
        self.started.set()
        await self.stopping.wait()

    async def shutdown(self) -> None:
        self.stopping.set()


class ProtocolPlugin:
    def __init__(self, *servers: Any) -> None:
        self.servers = servers

    @hookimpl
    def conveyor_protocols(self, app: Conveyor) -> Any:
        return list(self.servers)


async def test_hook_conveyor_protocols() -> None:
    server = FakeServer()
    plugin = ProtocolPlugin(server)
    app = Conveyor(
        "sqlite:///:memory:",
        plugins=[plugin],
        plugin_autoload=False,
        maintenance=False,
        disable_plugins=["http", "tcp"],
    )
    try:
        async with app:
            servers = app.protocol_servers()
            assert servers == [server] and isinstance(server, ProtocolServer)
            addresses: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, addresses.append)
                await server.started.wait()
                await server.shutdown()  # serve returns by itself: the task group can exit
            assert addresses == ["fake://here"]
    finally:
        app.pm.unregister(plugin)
    bad = Conveyor("sqlite:///:memory:", plugins=[ProtocolPlugin(object())], plugin_autoload=False)
    with pytest.raises(PluginError, match="ProtocolServer"):
        bad.protocol_servers()


class EchoWorker:
    async def process(self, job: Job) -> Any:
        if job.data == "explode":
            raise RuntimeError("kaboom")
        return {"echo": job.data}


class EnginePlugin:
    @hookimpl
    def conveyor_engines(self, app: Conveyor, registry: WorkerRegistry) -> None:
        registry.register_engine_factory("echo", EchoWorker, origin="tests")
        registry.register_engine_factory("other", EchoWorker, origin="tests")
        registry.route_queue_to_engine("build", "echo")


async def test_hook_conveyor_engines() -> None:
    plugin = EnginePlugin()
    app = Conveyor("sqlite:///:memory:", plugins=[plugin], plugin_autoload=False, maintenance=False)
    try:
        async with app:
            assert app.workers.engines == ["echo", "other", "python"]  # python: the built-in entry point
            ok = await app.push("build", "compile", "src")
            bad = await app.push("build", "compile", "explode", max_attempts=1)
            routed = await app.push("misc", "x", 1, metadata={"engine": "OTHER"})
            await app.workers.dispatch_next_with_registered_worker(app, "build")
            await app.workers.dispatch_next_with_registered_worker(app, "build")
            await app.workers.dispatch_next_with_registered_worker(app, "misc")
            assert (await app.get(ok)).result == {"echo": "src"}  # type: ignore[union-attr]
            failed = await app.get(bad)
            assert failed and failed.state is JobState.DLQ and failed.last_error == "RuntimeError: kaboom"
            assert (await app.get(routed)).state is JobState.COMPLETED  # type: ignore[union-attr]
            assert await app.workers.dispatch_next_with_registered_worker(app, "build") is None
            lost = await app.push("nowhere", "x")
            with pytest.raises(ValidationError, match="no engine for queue 'nowhere'"):
                await app.workers.dispatch_next_with_registered_worker(app, "nowhere")
            assert (await app.get(lost)).state is JobState.ACTIVE  # type: ignore[union-attr]
            unknown = await app.push("build", "x", metadata={"engine": "gpu"})
            with pytest.raises(ValidationError, match="'gpu' is not a registered engine"):
                await app.workers.dispatch_next_with_registered_worker(app, "build")
            assert (await app.get(unknown)).state is JobState.ACTIVE  # type: ignore[union-attr]
    finally:
        app.pm.unregister(plugin)


async def test_a_duplicate_engine_aborts_opening_with_both_origins() -> None:
    app = Conveyor("sqlite:///:memory:", plugins=[EnginePlugin(), EnginePlugin()], plugin_autoload=False)
    with pytest.raises(PluginError, match="'echo' .*already registered"):
        await app.open()
    registry = WorkerRegistry()
    with pytest.raises(PluginError, match="invalid"):
        registry.register_engine_factory("Bad Id!", EchoWorker)
    with pytest.raises(PluginError, match="not callable"):
        registry.register_engine_factory("x", "nope")  # type: ignore[arg-type]


class SinkPlugin:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.got = anyio.Event()

    @hookimpl
    def conveyor_event_sinks(self, app: Conveyor) -> Any:
        return self

    async def handle(self, event: Event) -> None:
        self.events.append(event)
        self.got.set()


async def test_hook_conveyor_event_sinks() -> None:
    plugin = SinkPlugin()
    app = Conveyor("sqlite:///:memory:", plugins=[plugin], plugin_autoload=False, maintenance=False)
    try:
        async with app:
            job_id = await app.push("q", "j")
            with anyio.fail_after(10):
                await plugin.got.wait()
        assert [(e.event, e.job_id, e.queue) for e in plugin.events] == [("job.pushed", job_id, "q")]
        assert plugin.events[0].to_wire()["timestamp"].endswith("Z")
    finally:
        app.pm.unregister(plugin)


def test_a_plugin_with_an_unknown_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def conveyor_storaje(self, app: Conveyor) -> None: ...

    with pytest.raises(PluginError, match="unknown hook"):
        Conveyor("sqlite:///:memory:", plugins=[Typo()], plugin_autoload=False)
