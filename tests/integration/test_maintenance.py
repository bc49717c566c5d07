"""The maintenance sweep: stalls, timeouts, TTLs and delayed promotion, on every backend."""

from __future__ import annotations

import anyio
import pytest

from conveyor import Conveyor, JobState

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio

STALL = 30_000  # the default stall timeout


async def test_stalled_job_is_redelivered_then_dead_lettered(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "fragile", max_attempts=2, metadata={"m": 1})
    [first] = await app.pull("q", worker_id="worker-1")
    clock.advance(STALL - 1)
    assert (await app.run_maintenance()).stalled == 0
    clock.advance(2)
    assert (await app.run_maintenance()).stalled == 1
    job = await app.get(job_id)
    assert job and job.state is JobState.WAITING and job.attempt == 1 and job.worker_id is None
    assert job.last_error is not None and "stalled" in job.last_error and "worker-1" in job.last_error
    [second] = await app.pull("q", worker_id="worker-2")
    assert second.id == first.id and second.worker_id == "worker-2"
    clock.advance(STALL + 1)
    await app.run_maintenance()
    job = await app.get(job_id)
    assert job and job.state is JobState.DLQ and job.attempt == 2 and "worker-2" in (job.last_error or "")
    assert job.metadata == {"m": 1}
    assert [j.id for j in await app.dlq("q")] == [job_id]


async def test_heartbeats_keep_a_job_alive(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "long")
    await app.pull("q")
    for _ in range(5):
        clock.advance(STALL - 1000)
        await app.heartbeat(job_id)
        await app.run_maintenance()
    assert (await app.get(job_id)).state is JobState.ACTIVE  # type: ignore[union-attr]


async def test_timeout_fails_the_attempt_with_backoff(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "slow", timeout_ms=5_000, backoff="fixed", backoff_delay_ms=100)
    await app.pull("q")
    clock.advance(4_999)
    await app.heartbeat(job_id)  # heartbeats do not extend a timeout
    assert (await app.run_maintenance()).timed_out == 0
    clock.advance(1)
    assert (await app.run_maintenance()).timed_out == 1
    job = await app.get(job_id)
    assert job and job.state is JobState.DELAYED and job.attempt == 1
    assert job.last_error == "timed out after 5000 ms"


async def test_ttl_expires_unstarted_jobs_into_the_dlq(app: Conveyor, clock: FakeClock) -> None:
    expiring = await app.push("q", "a", ttl_ms=1_000)
    started = await app.push("q", "b", ttl_ms=1_000, priority=1)
    forever = await app.push("q", "c")
    await app.pull("q")  # b starts in time: its TTL no longer applies
    clock.advance(1_000)
    assert (await app.run_maintenance()).expired == 1
    assert (await app.get(expiring)).state is JobState.DLQ  # type: ignore[union-attr]
    assert "expired" in ((await app.get(expiring)).last_error or "")  # type: ignore[union-attr]
    assert (await app.get(started)).state is JobState.ACTIVE  # type: ignore[union-attr]
    assert (await app.get(forever)).state is JobState.WAITING  # type: ignore[union-attr]


async def test_a_released_job_is_again_subject_to_its_ttl(app: Conveyor, clock: FakeClock) -> None:
    """A release puts the job back unstarted: "not started within ttl_ms" applies again."""
    released = await app.push("q", "a", ttl_ms=1_000)
    kept = await app.push("q", "b", ttl_ms=1_000)
    await app.pull("q", 2, worker_id="w")
    await app.release(released, worker_id="w")
    clock.advance(1_000)
    assert (await app.run_maintenance()).expired == 1
    assert (await app.get(released)).state is JobState.DLQ  # type: ignore[union-attr]
    assert (await app.get(kept)).state is JobState.ACTIVE  # type: ignore[union-attr]


async def test_an_expired_job_removed_on_fail_is_removed(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "a", ttl_ms=1_000, remove_on_fail=True)
    clock.advance(1_000)
    assert (await app.run_maintenance()).expired == 1
    assert await app.get(job_id) is None


async def test_a_sweep_run_twice_changes_nothing_more(app: Conveyor, clock: FakeClock) -> None:
    await app.push_batch("q", [{"name": "x"}] * 3)
    await app.push("q", "later", delay_ms=10)
    await app.pull("q", 3)
    clock.advance(STALL + 1)
    first = await app.run_maintenance()
    assert (first.stalled, first.promoted) == (3, 1)
    second = await app.run_maintenance()
    assert (second.stalled, second.promoted, second.timed_out, second.expired) == (0, 0, 0, 0)
    assert {j.attempt for j in await app.pull("q", 10)} == {0, 1}


async def test_the_embedded_loop_recovers_a_stalled_job(file_url: str) -> None:
    """Real clock, real loop: a worker that vanishes loses its job to the next worker."""
    async with Conveyor(file_url, stall_timeout_ms=300, maintenance_interval_ms=50, plugin_autoload=False) as app:
        job_id = await app.push("q", "orphan")
        [job] = await app.pull("q", worker_id="vanished")
        redelivered = await app.pull("q", worker_id="survivor", wait_ms=30_000)
        assert [j.id for j in redelivered] == [job.id]
        assert redelivered[0].attempt == 1 and redelivered[0].worker_id == "survivor"
        await app.ack(job_id, "done")
        assert (await app.get(job_id)).state is JobState.COMPLETED  # type: ignore[union-attr]


async def test_an_app_closed_right_after_it_opened_closes(storage_url: str) -> None:
    """``close`` before the maintenance task has first run used to miss its cancel scope, and
    the loop then ran for ever: ``async with Conveyor(url): pass`` never returned."""
    with anyio.fail_after(60):  # a guard against the hang, not a speed check
        for _ in range(3):
            async with Conveyor(storage_url, plugin_autoload=False, maintenance_interval_ms=60_000):
                pass
