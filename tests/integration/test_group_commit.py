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


def _helper(app: Conveyor) -> Any:
    """The SQLite storage's WAL sync helper process (`wal_sync`)."""
    syncer = app.storage._syncer
    assert syncer is not None and syncer._process is not None
    return syncer._process


def _row_names(path: Path) -> list[str]:
    """What another connection sees in the file: committed rows, acknowledged or not."""
    import sqlite3

    other = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in other.execute("SELECT name FROM conveyor_jobs"))
    finally:
        other.close()


async def test_a_write_is_answered_only_once_the_helper_has_synced_the_wal(tmp_path: Path) -> None:
    """The COMMIT runs at ``NORMAL`` (no fsync); the helper process fsyncs the WAL, and only
    then is the caller answered. With the helper stopped, a push is committed (another
    connection sees it) but not answered; a claim, which needs no fsync, is."""
    import os
    import signal

    path = tmp_path / "c.db"
    async with Conveyor(f"sqlite:///{path}", maintenance=False, plugin_autoload=False) as app:
        raw = app.storage._conn.connection.driver_connection
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: the helper syncs
        helper = _helper(app)
        if os.path.isdir(f"/proc/{helper.pid}/fd"):  # Linux: it holds the WAL open
            held = {os.path.realpath(f"/proc/{helper.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{helper.pid}/fd")}
            assert os.path.realpath(f"{path}-wal") in held
        await app.push("q", "before")
        os.kill(helper.pid, signal.SIGSTOP)
        try:
            claimed = await app.pull("q")  # a claim asks for no fsync
            assert [job.name for job in claimed] == ["before"]
            async with anyio.create_task_group() as tg:
                answered = anyio.Event()

                async def push() -> None:
                    await app.push("q", "held")
                    answered.set()

                tg.start_soon(push)
                while "held" not in _row_names(path):  # committed...
                    await anyio.sleep(0.01)
                await anyio.sleep(0.2)
                assert not answered.is_set()  # ...but not answered while the WAL is not synced
                os.kill(helper.pid, signal.SIGCONT)
        finally:
            os.kill(helper.pid, signal.SIGCONT)
        assert answered.is_set()
    assert helper.poll() is not None  # closing the storage stopped it


async def test_after_a_cancelled_flusher_a_claim_waits_for_the_sync_it_left(tmp_path: Path) -> None:
    """A flusher cancelled while its group's fsync runs (loop teardown) fails that group's
    callers, but the commit stays in the WAL. A claim that follows must not hand out that job
    before the fsync ends: the disk may yet lose it."""
    import asyncio
    import os
    import signal

    from conveyor import StorageError

    path = tmp_path / "cancelled.db"
    async with Conveyor(f"sqlite:///{path}", maintenance=False, plugin_autoload=False) as app:
        storage: Any = app.storage
        helper = _helper(app)
        os.kill(helper.pid, signal.SIGSTOP)
        try:
            push = asyncio.ensure_future(app.push("q", "unsynced"))
            while "unsynced" not in _row_names(path):
                await asyncio.sleep(0.01)
            for flusher in list(storage._groups._flushers):
                flusher.cancel()
            with pytest.raises(StorageError):
                await push
            pull = asyncio.ensure_future(app.pull("q"))
            await asyncio.sleep(0.2)
            assert not pull.done()  # the claim waits for the fsync in flight
        finally:
            os.kill(helper.pid, signal.SIGCONT)
        assert [job.name for job in await pull] == ["unsynced"]


async def test_a_helper_that_dies_fails_the_calls_waiting_on_it_and_another_one_starts(tmp_path: Path) -> None:
    """Whether a commit reached the disk is unknown when the helper dies mid-sync: its callers
    get an error, never a success. The next write starts a new helper."""
    import os
    import signal

    from conveyor import StorageError

    path = tmp_path / "dies.db"
    async with Conveyor(f"sqlite:///{path}", maintenance=False, plugin_autoload=False) as app:
        helper = _helper(app)
        os.kill(helper.pid, signal.SIGSTOP)
        async with anyio.create_task_group() as tg:
            outcome: list[Any] = []

            async def push() -> None:
                try:
                    outcome.append(await app.push("q", "unknown"))
                except StorageError as exc:
                    outcome.append(exc)

            tg.start_soon(push)
            while "unknown" not in _row_names(path):
                await anyio.sleep(0.01)
            os.kill(helper.pid, signal.SIGKILL)
        assert isinstance(outcome[0], StorageError) and "durable" in outcome[0].message
        await app.push("q", "after")
        assert _helper(app).pid != helper.pid
        assert [job.name for job in await app.pull("q", 10)] == ["unknown", "after"]


async def test_a_helper_that_cannot_start_again_leaves_the_commit_to_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper killed while ``sys.executable`` no longer runs (a rebuilt environment under a
    running server): the next write is not refused, its COMMIT syncs (``FULL``) from then on."""
    import os
    import signal
    import sys

    async with Conveyor(f"sqlite:///{tmp_path / 'gone.db'}", maintenance=False, plugin_autoload=False) as app:
        storage: Any = app.storage
        os.kill(_helper(app).pid, signal.SIGKILL)
        while storage._syncer._process is not None:  # the loop notices it is gone
            await anyio.sleep(0.01)
        monkeypatch.setattr(sys, "executable", "/bin/false")
        await app.push("q", "a")
        assert storage._syncer is None
        assert storage._conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert [job.name for job in await app.pull("q")] == ["a"]


async def test_the_helper_syncs_the_wal_beside_the_file_a_symlink_names(tmp_path: Path) -> None:
    """SQLite resolves a symlinked database path and writes its WAL beside the real file; a
    stale file beside the link must not be what gets synced."""
    import os

    (tmp_path / "real").mkdir()
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "q.db").symlink_to(tmp_path / "real" / "q.db")
    (tmp_path / "link" / "q.db-wal").touch()
    async with Conveyor(f"sqlite:///{tmp_path / 'link' / 'q.db'}", maintenance=False, plugin_autoload=False) as app:
        await app.push("q", "a")
        assert app.storage._syncer.wal == tmp_path / "real" / "q.db-wal"
        assert (tmp_path / "real" / "q.db-wal").stat().st_size > 0
        helper = _helper(app)
        if os.path.isdir(f"/proc/{helper.pid}/fd"):  # Linux: the file it holds open
            held = {os.path.realpath(f"/proc/{helper.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{helper.pid}/fd")}
            assert str(tmp_path / "real" / "q.db-wal") in held
            assert str(tmp_path / "link" / "q.db-wal") not in held


async def test_an_fsync_error_fails_its_calls_and_every_later_write(tmp_path: Path) -> None:
    """After the disk reports a write error, data written since may be lost: the storage
    refuses writes that need the disk from then on, and says why. (The error is made by
    pointing a new helper at a WAL that does not exist.)"""
    import os
    import signal

    from conveyor import StorageError

    async with Conveyor(f"sqlite:///{tmp_path / 'e.db'}", maintenance=False, plugin_autoload=False) as app:
        syncer = app.storage._syncer
        os.kill(_helper(app).pid, signal.SIGKILL)
        while syncer._process is not None:  # the loop notices it is gone
            await anyio.sleep(0.01)
        syncer.wal = tmp_path / "missing" / "e.db-wal"
        for name in ("first", "second"):
            with pytest.raises(StorageError, match="fsync of .*e.db-wal failed"):
                await app.push("q", name)
        assert syncer._process is None  # refused without starting another helper
        # "first" was committed before its fsync failed (its outcome is unknown to its caller);
        # "second" was refused before it ran. Reads need no fsync.
        assert (await app.stats("q")).waiting == 1


async def test_without_a_helper_each_commit_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where ``sys.executable`` cannot run the helper (some embedding hosts), the storage says
    so and commits at ``synchronous=FULL`` instead: durable, with the fsync in the COMMIT."""
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")
    async with Conveyor(f"sqlite:///{tmp_path / 'f.db'}", maintenance=False, plugin_autoload=False) as app:
        storage: Any = app.storage
        assert storage._syncer is None
        assert storage._conn.connection.driver_connection.execute("PRAGMA synchronous").fetchone()[0] == 2
        await app.push("q", "a")
        assert [job.name for job in await app.pull("q")] == ["a"]


async def test_a_claim_commits_without_waiting_for_the_wal_flush_on_postgres(pg_schema: str) -> None:
    """Claims (``flush=False``) commit with ``synchronous_commit=off``; every other change, and
    any group holding one, still waits for the WAL flush, and the setting is restored after."""

    def setting(conn: Any) -> tuple[str, set[str]]:
        return str(conn.exec_driver_sql("SHOW synchronous_commit").scalar()), set()

    async with Conveyor(pg_schema, maintenance=False, plugin_autoload=False) as app:
        storage: Any = app.storage
        assert await storage._run(setting, flush=False) == "off"
        assert await storage._run(setting) == "on"
        assert await storage._run(setting, flush=False) == "off"
        outcomes: dict[str, str] = {}

        async def call(name: str, flush: bool) -> None:
            outcomes[name] = await storage._run(setting, flush=flush)

        async with anyio.create_task_group() as tg:  # started in one tick: one group
            tg.start_soon(call, "claim", False)
            tg.start_soon(call, "push", True)
        assert outcomes == {"claim": "on", "push": "on"}  # the group waits for its push
        await app.push("q", "a")
        assert [job.name for job in await app.pull("q")] == ["a"]
        assert await storage._run(setting) == "on"
