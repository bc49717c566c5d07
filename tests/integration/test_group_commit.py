"""Group commit (SQLite and PostgreSQL): calls that arrive together share one transaction, run
first without savepoints; when one fails, the group is rerun with each call isolated, so the
failing call alone is refused and no partial write of it survives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from conveyor import Conveyor, DuplicateKeyError
from conveyor.plugins.sql import primitives

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite-file", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_schema"))
    return f"sqlite:///{tmp_path / 'g.db'}"


async def test_a_failing_call_in_a_group_is_undone_alone(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # without the pre-check, the unique index fails the batch half way through its insert
    monkeypatch.setattr(primitives, "_check_unique_keys", lambda cur, d, batch: None)
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        outcomes: dict[str, Any] = {}

        async def call(name: str, fn: Any) -> None:
            try:
                outcomes[name] = await fn()
            except DuplicateKeyError as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tg:  # started in one tick: one group
            tg.start_soon(call, "first", lambda: app.push("q", "first", unique_key="k"))
            tg.start_soon(
                call, "batch", lambda: app.push_batch("q", [{"name": "partial"}, {"name": "dup", "unique_key": "k"}])
            )
            tg.start_soon(call, "third", lambda: app.push("q", "third"))
        assert isinstance(outcomes["batch"], DuplicateKeyError)
        assert not isinstance(outcomes["first"], Exception) and not isinstance(outcomes["third"], Exception)
        names = sorted(job.name for job in await app.pull("q", 10))
        assert names == ["first", "third"]  # "partial" was inserted, then rolled back with its call


async def test_many_concurrent_calls_each_get_their_own_outcome(url: str) -> None:
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        outcomes: dict[int, Any] = {}

        async def push(i: int) -> None:
            try:  # every fifth one repeats a unique key held by a job pushed before
                outcomes[i] = await app.push("many", f"job-{i}", unique_key=f"k{i - i % 5}")
            except DuplicateKeyError as exc:
                outcomes[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(0, 200, 5):
                tg.start_soon(push, i)
        async with anyio.create_task_group() as tg:
            for i in range(200):
                if i % 5:
                    tg.start_soon(push, i)
        refused = {i for i, outcome in outcomes.items() if isinstance(outcome, DuplicateKeyError)}
        assert refused == {i for i in range(200) if i % 5}
        stored = await app.pull("many", 1000)
        assert sorted(job.name for job in stored) == sorted(f"job-{i}" for i in range(0, 200, 5))


async def test_a_shared_group_commits_on_the_committer_thread_and_is_on_disk(tmp_path: Path) -> None:
    """A group of several callers is committed off the loop; each call returns only once its
    transaction is committed: another connection sees every acknowledged job."""
    import sqlite3
    import threading

    path = tmp_path / "c.db"
    async with Conveyor(f"sqlite:///{path}", maintenance=False, plugin_autoload=False) as app:
        ids: list[Any] = []

        async def push(i: int) -> None:
            ids.append(await app.push("q", f"job-{i}"))

        async with anyio.create_task_group() as tg:  # started in one tick: one group
            for i in range(20):
                tg.start_soon(push, i)
        assert any(t.name.startswith("conveyor-sqlite-commit") for t in threading.enumerate())
        other = sqlite3.connect(path)
        try:
            stored = {row[0] for row in other.execute("SELECT id FROM conveyor_jobs")}
        finally:
            other.close()
        assert stored == {job_id.hex for job_id in ids}
    assert not any(t.name.startswith("conveyor-sqlite-commit") for t in threading.enumerate())


async def test_a_claim_commits_without_waiting_for_the_disk_and_a_push_waits(url: str) -> None:
    """Claims (``flush=False``) commit without the flush: SQLite runs that transaction at
    ``synchronous=NORMAL`` and PostgreSQL with ``synchronous_commit=off``; every other change,
    and any group holding one, still waits for the disk, and the setting is restored after."""

    def setting(conn: Any) -> tuple[str, set[str]]:
        if conn.dialect.name == "postgresql":
            return str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()), set()
        return str(conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0]), set()

    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        storage: Any = app.storage
        lazy = "off" if url.startswith("postgresql") else "1"
        flushed = "on" if url.startswith("postgresql") else "2"
        assert await storage._run(setting, flush=False) == lazy
        assert await storage._run(setting) == flushed
        assert await storage._run(setting, flush=False) == lazy
        outcomes: dict[str, str] = {}

        async def call(name: str, flush: bool) -> None:
            outcomes[name] = await storage._run(setting, flush=flush)

        async with anyio.create_task_group() as tg:  # started in one tick: one group
            tg.start_soon(call, "claim", False)
            tg.start_soon(call, "push", True)
        assert outcomes == {"claim": flushed, "push": flushed}  # the group waits for its push
        await app.push("q", "a")
        assert [job.name for job in await app.pull("q")] == ["a"]
        assert await storage._run(setting) == flushed


async def test_a_plain_cancel_of_the_flusher_mid_commit_waits_and_reports_the_commit(tmp_path: Path) -> None:
    """Loop teardown cancels leftover tasks with ``Task.cancel()``, which an anyio shield does
    not stop. A flusher cancelled while its COMMIT runs on the committer thread waits for it
    (nothing touches the connection meanwhile) and its callers get what was committed."""
    import asyncio
    import sqlite3
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor

    release = threading.Event()

    class HeldCommit(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            def run() -> Any:
                result = fn(*args)
                release.wait(30)  # the tail of a slow fsync
                return result

            return super().submit(run)

    path = tmp_path / "cancel.db"
    async with Conveyor(f"sqlite:///{path}", maintenance=False, plugin_autoload=False) as app:
        storage: Any = app.storage
        storage._committer.shutdown()
        storage._committer = HeldCommit(1, thread_name_prefix="conveyor-sqlite-commit")
        pushes = [asyncio.ensure_future(app.push("q", f"j{i}")) for i in range(3)]
        while not storage._groups._flushers:
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # the group is on the thread, held
        threading.Timer(0.2, release.set).start()  # the loop itself will be blocked, waiting
        for flusher in list(storage._groups._flushers):
            flusher.cancel()
        ids = await asyncio.gather(*pushes)
        assert len(set(ids)) == 3
        assert [job.name for job in await app.pull("q", 10)] == ["j0", "j1", "j2"]
    stored = sqlite3.connect(path)
    try:
        assert sorted(row[0] for row in stored.execute("SELECT name FROM conveyor_jobs")) == ["j0", "j1", "j2"]
    finally:
        stored.close()
