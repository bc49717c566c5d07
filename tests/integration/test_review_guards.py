"""Guards found in review: cancelled calls, worker ownership, lock order, the unique index
under races, schema isolation, and a SQLite writer waiting for another process's lock."""

from __future__ import annotations

import sqlite3
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from conveyor import Conveyor, DuplicateKeyError, InvalidStateError, JobState
from conveyor.plugins.sql import primitives

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio
STALL = 30_000


@pytest.mark.parametrize("storage_url", ["sqlite-file"], indirect=True)
async def test_a_cancelled_pull_on_sqlite_is_dropped_before_it_runs(app: Conveyor) -> None:
    job_id = await app.push("q", "precious")
    with anyio.move_on_after(0):
        await app.pull("q")
    assert (await app.get(job_id)).state is JobState.WAITING  # type: ignore[union-attr]


async def test_a_stale_worker_cannot_touch_a_reclaimed_job(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "contested")
    await app.pull("q", worker_id="a")
    clock.advance(STALL + 1)
    await app.run_maintenance()
    await app.pull("q", worker_id="b")
    for call in (
        lambda: app.ack(job_id, "stale", worker_id="a"),
        lambda: app.fail(job_id, "stale", worker_id="a"),
        lambda: app.heartbeat(job_id, worker_id="a"),
        lambda: app.progress(job_id, 5, worker_id="a"),
    ):
        with pytest.raises(InvalidStateError, match="held by worker 'b'"):
            await call()
    [result] = await app.ack_batch([{"id": job_id, "result": "stale"}], worker_id="a")
    assert not result.ok and "held by worker 'b'" in result.error["message"]  # type: ignore[index]
    await app.heartbeat(job_id, worker_id="b")
    await app.ack(job_id, "fresh", worker_id="b")
    assert (await app.get(job_id)).result == "fresh"  # type: ignore[union-attr]


async def test_the_unique_index_decides_a_race_the_precheck_cannot_see(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(primitives, "_check_unique_keys", lambda cur, d, batch: None)
    outcomes: list[Any] = []

    async def push(name: str) -> None:
        try:
            outcomes.append(await app.push("q", name, unique_key="same"))
        except DuplicateKeyError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(push, "a")
        tg.start_soon(push, "b")
    assert sorted(type(o).__name__ for o in outcomes) == ["DuplicateKeyError", "UUID"]
    assert (await app.stats("q")).waiting == 1


@asynccontextmanager
async def _always(name: str) -> Any:
    yield True


async def test_sweeps_that_all_run_at_once_fail_each_stall_once(
    pg_schema: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No advisory lock: correctness must come from the row-level re-check alone."""
    opts: dict[str, Any] = {"clock": clock, "maintenance": False, "plugin_autoload": False}
    async with Conveyor(pg_schema, **opts) as a, Conveyor(pg_schema, **opts) as b:
        for node in (a, b):
            monkeypatch.setattr(node.storage, "exclusive", _always)
        ids = await a.push_batch("q", [{"name": f"j{i}", "options": {"backoff_delay_ms": 0}} for i in range(60)])
        await a.pull("q", 60)
        clock.advance(STALL + 1)
        async with anyio.create_task_group() as tg:
            for node in (a, b, a, b, a, b):
                tg.start_soon(node.run_maintenance)
        jobs = [await b.get(i) for i in ids]
        assert {(j.state, j.attempt) for j in jobs if j} == {(JobState.WAITING, 1)}


async def test_batch_acks_racing_sweeps_in_any_order_never_deadlock(pg_schema: str, clock: FakeClock) -> None:
    opts: dict[str, Any] = {"clock": clock, "maintenance": False, "plugin_autoload": False}
    async with Conveyor(pg_schema, **opts) as a, Conveyor(pg_schema, **opts) as b:
        for _ in range(5):
            ids = await a.push_batch("q", [{"name": "j"} for _ in range(300)])
            await a.pull("q", 300)
            clock.advance(STALL + 1)
            results: list[Any] = []

            async def ack(node: Conveyor, order: list[Any], results: list[Any] = results) -> None:
                results.extend(await node.ack_batch([{"id": i} for i in order]))

            async with anyio.create_task_group() as tg:
                tg.start_soon(ack, a, list(reversed(ids)))
                tg.start_soon(ack, b, ids)
                tg.start_soon(b.run_maintenance)
            acked = [r.id for r in results if r.ok]
            assert len(acked) == len(set(acked)) <= 300  # each job completed at most once
            for job_id in ids:
                job = await a.get(job_id)
                assert job and job.state in (JobState.COMPLETED, JobState.WAITING)


async def test_schemas_sharing_a_database_do_not_share_the_sweep_lock(pg_schema: str) -> None:
    other = pg_schema.replace("?schema=", "?schema=x")
    opts: dict[str, Any] = {"maintenance": False, "plugin_autoload": False}
    try:
        async with Conveyor(pg_schema, **opts) as a, Conveyor(other, **opts) as b:
            async with a.storage.exclusive("maintenance") as held_a, b.storage.exclusive("maintenance") as held_b:
                assert held_a and held_b
            async with a.storage.exclusive("maintenance") as first, a.storage.exclusive("maintenance") as second:
                assert first and not second  # same schema: one holder at a time
    finally:
        import psycopg

        from ..conftest import PG_URL

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{other.rsplit("=", 1)[1]}" CASCADE')


async def test_a_sqlite_writer_waits_for_another_process_without_blocking_the_loop(file_url: str) -> None:
    async with Conveyor(file_url, maintenance=False, plugin_autoload=False) as app:
        await app.push("q", "first")
        other = sqlite3.connect(file_url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        ticks = 0
        done = anyio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await anyio.sleep(0.001)

        async def release_later() -> None:
            while ticks < 50:  # the loop keeps running while the push waits
                await anyio.sleep(0.001)
            other.execute("COMMIT")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            tg.start_soon(release_later)
            job_id = await app.push("q", "second")
            done.set()
        other.close()
        assert ticks >= 50
        assert (await app.get(job_id)).state is JobState.WAITING  # type: ignore[union-attr]


async def test_a_pull_cancelled_while_waiting_for_the_lock_claims_nothing(file_url: str) -> None:
    async with Conveyor(file_url, maintenance=False, plugin_autoload=False) as app:
        job_id = await app.push("q", "precious")
        other = sqlite3.connect(file_url.removeprefix("sqlite:///"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with anyio.move_on_after(0.05):
            await app.pull("q")  # waits for the lock, then its caller gives up
        other.execute("COMMIT")
        other.close()
        assert (await app.get(job_id)).state is JobState.WAITING  # type: ignore[union-attr]


async def test_close_finishes_queued_calls_and_refuses_later_ones(file_url: str) -> None:
    from conveyor import StorageError

    app = Conveyor(file_url, maintenance=False, plugin_autoload=False)
    await app.open()
    storage = app.storage
    results: list[Any] = []

    async def push_then_push_again() -> None:
        results.append(await app.push("q", "first"))
        try:
            await storage.insert_jobs([])  # a caller woken during close() must not hang
        except StorageError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(push_then_push_again)
        await anyio.sleep(0)
        tg.start_soon(storage.close)
        tg.start_soon(storage.close)  # twice at once is harmless
    assert len(results) == 2 and isinstance(results[1], StorageError)
    await app.close()


async def test_huge_progress_is_clamped(app: Conveyor) -> None:
    job_id = await app.push("q", "j")
    await app.pull("q")
    await app.progress(job_id, 10**400)
    assert (await app.get(job_id)).progress == 100  # type: ignore[union-attr]
    await app.progress(job_id, float("-inf"))
    assert (await app.get(job_id)).progress == 0  # type: ignore[union-attr]


def test_a_mixed_case_schema_is_refused_with_a_clear_error() -> None:
    from conveyor import ValidationError
    from conveyor.plugins.sql.postgres import PostgresStorage

    with pytest.raises(ValidationError, match="lower-case"):
        PostgresStorage("postgresql://postgres@127.0.0.1/test?schema=Mixed")
