"""Long-poll pulls are woken by pushes: in-process on every backend, and across nodes on
PostgreSQL through LISTEN/NOTIFY (with the safety poll pushed out of reach, a pull that returns
the job can only have been woken by the notification)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from conveyor import Conveyor
from conveyor.plugins.sql import postgres
from conveyor.pulls import PullStop

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio


async def test_a_waiting_pull_gets_a_job_pushed_later(app: Conveyor) -> None:
    got: list = []

    async def worker() -> None:
        got.extend(await app.pull("q", 5, wait_ms=60_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.sleep(0.05)
        job_id = await app.push("q", "late")
    assert [j.id for j in got] == [job_id]


async def test_a_waiting_pull_times_out_empty(app: Conveyor) -> None:
    assert await app.pull("q", wait_ms=50) == []


async def test_listen_notify_wakes_a_puller_on_another_node(
    pg_schema: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "SAFETY_POLL_S", 3600.0)
    opts = {"maintenance": False, "plugin_autoload": False}
    async with Conveyor(pg_schema, **opts) as node_a, Conveyor(pg_schema, **opts) as node_b:
        got: list = []

        async def worker() -> None:
            got.extend(await node_b.pull("q", wait_ms=120_000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            await anyio.sleep(0.2)  # let node B start waiting
            job_id = await node_a.push("q", "from-a")
        assert [j.id for j in got] == [job_id]


async def test_retries_that_become_waiting_wake_pullers(app: Conveyor) -> None:
    job_id = await app.push("q", "again", backoff_delay_ms=0)
    await app.pull("q")
    got: list = []

    async def worker() -> None:
        got.extend(await app.pull("q", wait_ms=60_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.sleep(0.05)
        await app.fail(job_id, "transient")
    assert [j.id for j in got] == [job_id]


@pytest.mark.parametrize("as_json", [False, True])
async def test_a_pull_cancelled_while_its_claim_commits_gives_the_jobs_back(
    app: Conveyor, as_json: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's group has committed, and waits (as for its fsync) when the caller gives up:
    its jobs wait again, the attempt not counted, instead of sitting active for nobody until
    the stall timeout."""
    job_id = await app.push("q", "j", max_attempts=1)
    groups = app.storage._groups  # type: ignore[attr-defined]
    commit, committed, go_on = groups._commit, anyio.Event(), anyio.Event()

    async def commit_then_wait(group: list) -> Any:
        done = await commit(group)
        if any(op.orphaned for op in group):  # the claim's group
            committed.set()
            await go_on.wait()
        return done

    monkeypatch.setattr(groups, "_commit", commit_then_wait)
    pull = app.pull_json if as_json else app.pull
    async with anyio.create_task_group() as tg:
        tg.start_soon(pull, "q", 1)
        await committed.wait()
        tg.cancel_scope.cancel()
        go_on.set()
    await groups.drain()  # the give-back is queued behind the claim's group
    job = await app.get(job_id)
    assert (job.state, job.attempt, job.worker_id) == ("waiting", 0, None)


async def test_a_stopped_long_poll_ends_its_wait_and_claims_nothing_after(app: Conveyor) -> None:
    """`PullStop`: what a protocol server uses when a waiting pull's client leaves."""
    stop = PullStop()
    got: list = []

    async def worker() -> None:
        with stop.applied():
            got.append(await app.pull("q", 5, wait_ms=60_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        while stop.waiting is None:
            await anyio.sleep(0.01)
        stop.stop()
    assert got == [[]]
    job_id = await app.push("q", "later")
    assert [j.id for j in await app.pull("q")] == [job_id]  # nobody claimed it meanwhile


async def test_a_stopped_pull_still_answers_the_claim_under_way(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop only ends waiting: a client that half-closed after its pull gets the job its
    first claim found."""
    job_id = await app.push("q", "j")
    stop = PullStop()
    claim = app.storage.claim_jobs

    async def claim_then_stop(*args: object) -> list:
        stop.stop()  # the stream ends while the claim runs
        return await claim(*args)

    monkeypatch.setattr(app.storage, "claim_jobs", claim_then_stop)
    with stop.applied():
        assert [j.id for j in await app.pull("q", wait_ms=60_000)] == [job_id]
