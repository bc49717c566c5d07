"""`WorkerRunner` in process, on a real SQLite file: concurrency, routing, timeouts, results,
failures and release on stop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from conveyor import Conveyor, JobState
from conveyor.runner import WorkerRunner

pytestmark = pytest.mark.anyio


@pytest.fixture
async def app(tmp_path: Path) -> Any:
    async with Conveyor(f"sqlite:///{tmp_path / 'w.db'}", maintenance=False, plugin_autoload=False) as conveyor:
        yield conveyor


async def run_until(runner: WorkerRunner, done: Any) -> None:
    """Run ``runner`` until ``done()`` holds, then stop it and wait for it to return."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        with anyio.fail_after(60):
            while not await done():
                await anyio.sleep(0.01)
        runner.stop()


async def test_concurrency_n_runs_n_jobs_at_once(app: Conveyor) -> None:
    n, running, peak = 5, 0, 0
    all_in = anyio.Event()

    @app.task(queue="par")
    async def hold(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == n:
            all_in.set()
        with anyio.fail_after(30):  # returns only once n handlers are inside at the same time
            await all_in.wait()
        running -= 1
        return i

    app.workers.route_queue_to_engine("par", "python")
    for i in range(2 * n):
        await hold.defer(i=i)
    runner = WorkerRunner(app, ["par"], concurrency=n, poll_ms=50)

    async def finished() -> bool:
        return (await app.stats("par")).completed == 2 * n

    await run_until(runner, finished)
    assert peak == n and runner.completed == 2 * n


async def test_results_failures_timeouts_and_routing(app: Conveyor) -> None:
    @app.task(queue="mixed", name="double", pass_context=True)
    async def double(ctx: Any, x: int) -> int:
        await ctx.progress(40, "working")
        return 2 * x

    @app.task(queue="mixed", name="broken")
    def broken() -> None:
        raise ValueError("bad input")

    @app.task(queue="mixed", name="slow")
    async def slow() -> None:
        await anyio.sleep(30)

    class Upper:
        async def process(self, job: Any) -> Any:
            return str(job.data).upper()

    app.workers.register_engine_factory("upper", Upper)
    app.workers.route_queue_to_engine("mixed", "python")
    ok = await double.defer(x=21)
    bad = await app.push("mixed", "broken", None, max_attempts=1)
    late = await app.push("mixed", "slow", None, max_attempts=1, timeout_ms=200)
    routed = await app.push("mixed", "double", "shout", metadata={"engine": "Upper"})  # metadata wins over the queue
    stray = await app.push("mixed", "double", {"x": 1}, metadata={"engine": "gpu"})
    runner = WorkerRunner(app, ["mixed"], concurrency=4, poll_ms=50)

    async def settled() -> bool:
        jobs = [await app.get(i) for i in (ok, bad, late, routed)]
        return all(j is not None and j.state in (JobState.COMPLETED, JobState.DLQ) for j in jobs)

    await run_until(runner, settled)
    done = await app.get(ok)
    assert done and done.result == 42 and done.progress == 40 and [e.message for e in done.logs] == ["working"]
    failed = await app.get(bad)
    assert failed and failed.state is JobState.DLQ and failed.last_error == "ValueError: bad input"
    timed_out = await app.get(late)
    assert timed_out and timed_out.state is JobState.DLQ and "timeout_ms (200 ms)" in (timed_out.last_error or "")
    assert (await app.get(routed)).result == "SHOUT"  # type: ignore[union-attr]
    assert (await app.get(stray)).state is JobState.ACTIVE  # type: ignore[union-attr]  # no engine: stays active


async def test_stopping_releases_what_outlives_the_grace(app: Conveyor) -> None:
    started = anyio.Event()

    @app.task(queue="long")
    async def forever() -> None:
        started.set()
        await anyio.sleep(60)

    @app.task(queue="long")
    async def quick() -> str:
        return "done"

    app.workers.route_queue_to_engine("long", "python")
    stuck = await forever.defer()
    runner = WorkerRunner(app, ["long"], concurrency=2, poll_ms=50, grace_s=0.2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        await started.wait()
        runner.stop()
    job = await app.get(stuck)
    assert job and job.state is JobState.WAITING and job.attempt == 0 and job.worker_id is None
    assert runner.released == 1
    await quick.defer()
    again = WorkerRunner(app, ["long"], concurrency=2, poll_ms=50, grace_s=5)

    async def quick_done() -> bool:
        return (await app.stats("long")).completed == 1

    async with anyio.create_task_group() as tg:  # the released job runs again: forever, so release it again
        tg.start_soon(again.run)
        with anyio.fail_after(30):
            while not await quick_done():
                await anyio.sleep(0.01)
        again.stop_now()
    assert (await app.get(stuck)).state is JobState.WAITING  # type: ignore[union-attr]


async def test_a_sync_handler_still_running_at_the_end_of_the_grace_is_not_released(app: Conveyor) -> None:
    """Its thread cannot be stopped: released, the job would run elsewhere while it still runs
    here. It stays active (the stall sweep takes it back once this worker is gone)."""
    import threading

    started, finish = threading.Event(), threading.Event()

    @app.task(queue="stuck")
    def blocking() -> str:
        started.set()
        finish.wait(30)
        return "late"

    app.workers.route_queue_to_engine("stuck", "python")
    job_id = await blocking.defer()
    runner = WorkerRunner(app, ["stuck"], concurrency=1, poll_ms=50, grace_s=0.2)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            await anyio.to_thread.run_sync(started.wait, 30)
            runner.stop()
        job = await app.get(job_id)
        assert job and job.state is JobState.ACTIVE and runner.released == 0
    finally:
        finish.set()


async def test_the_shell_engine_is_off_unless_enabled(tmp_path: Path) -> None:
    async with Conveyor(f"sqlite:///{tmp_path / 'off.db'}", maintenance=False, plugin_autoload=False) as off:
        assert "shell" not in off.workers.engines
    async with Conveyor(
        f"sqlite:///{tmp_path / 'on.db'}", maintenance=False, plugin_autoload=False, shell_engine=True
    ) as app:
        assert "shell" in app.workers.engines
        ok = await app.push(
            "sh", "echo", {"command": ["sh", "-c", "echo hi; echo err >&2"]}, metadata={"engine": "shell"}
        )
        bad = await app.push("sh", "false", {"command": "sh -c 'exit 3'"}, metadata={"engine": "shell"}, max_attempts=1)
        nothing = await app.push("sh", "none", {"cmd": "ls"}, metadata={"engine": "shell"}, max_attempts=1)
        for _ in range(3):
            await app.workers.dispatch_next_with_registered_worker(app, "sh")
        assert (await app.get(ok)).result == {"exit_code": 0, "stdout": "hi\n", "stderr": "err\n"}  # type: ignore[union-attr]
        failed = await app.get(bad)
        assert failed and failed.state is JobState.DLQ and "command exited with 3" in (failed.last_error or "")
        refused = await app.get(nothing)
        assert refused and 'needs "command"' in (refused.last_error or "")


async def test_a_handler_writes_logs_through_its_context(app: Conveyor) -> None:
    @app.task(queue="logs", pass_context=True)
    async def chatty(ctx: Any) -> str:
        await ctx.log("one")
        await ctx.progress(70)
        await ctx.log("two")
        await ctx.heartbeat()
        return ctx.job.queue

    app.workers.route_queue_to_engine("logs", "python")
    job_id = await chatty.defer()
    await app.workers.dispatch_next_with_registered_worker(app, "logs")
    job = await app.get(job_id)
    assert job and job.result == "logs" and job.progress == 70 and [e.message for e in job.logs] == ["one", "two"]


async def test_handlers_that_misbehave_fail_their_own_job_and_nothing_else(app: Conveyor) -> None:
    """A handler that lets a CancelledError out, raises its own TimeoutError, fails with text
    over the byte limit, or returns what cannot be stored: each job fails once, naming why,
    and the jobs acked in the same batch complete."""
    import asyncio

    @app.task(queue="odd")
    async def self_cancelled() -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner  # raises CancelledError, though nobody cancelled this job

    @app.task(queue="odd")
    async def upstream_timeout() -> None:
        raise TimeoutError("upstream API did not answer")

    @app.task(queue="odd")
    async def wordy() -> None:
        raise ValueError("é" * 6_000)  # 12,000 bytes

    @app.task(queue="odd")
    async def unstorable() -> Any:
        return {"when": object()}

    @app.task(queue="odd")
    async def with_nul() -> None:
        raise ValueError("a\x00b")  # fail refuses NUL: the text must still get through

    @app.task(queue="odd")
    async def fine(i: int) -> int:
        return i

    app.workers.route_queue_to_engine("odd", "python")
    failing = [
        await t.configure(max_attempts=1).defer()
        for t in (self_cancelled, upstream_timeout, wordy, unstorable, with_nul)
    ]
    good = [await fine.defer(i=i) for i in range(5)]
    runner = WorkerRunner(app, ["odd"], concurrency=20, poll_ms=50)

    async def settled() -> bool:
        stats = await app.stats("odd")
        return stats.completed == 5 and stats.dlq == 5

    await run_until(runner, settled)
    errors = [(await app.get(job_id)).last_error for job_id in failing]  # type: ignore[union-attr]
    assert errors[0].startswith("CancelledError")
    assert errors[1] == "TimeoutError: upstream API did not answer"
    assert errors[2].startswith("ValueError: ééé") and len(errors[2].encode()) <= 10 * 1024
    assert errors[3].startswith("the result was refused: ") and "not JSON-serializable" in errors[3]
    assert errors[4] == "ValueError: a\\x00b"
    assert {(await app.get(job_id)).state for job_id in good} == {JobState.COMPLETED}  # type: ignore[union-attr]


async def test_sync_handlers_run_as_many_at_once_as_the_concurrency(app: Conveyor) -> None:
    """Past anyio's 40 worker threads: 45 sync handlers wait for each other at a barrier."""
    import threading

    n = 45
    barrier = threading.Barrier(n, timeout=30)

    @app.task(queue="sync")
    def meet(i: int) -> int:
        barrier.wait()
        return i

    app.workers.route_queue_to_engine("sync", "python")
    for i in range(n):
        await meet.defer(i=i)
    runner = WorkerRunner(app, ["sync"], concurrency=n, poll_ms=50)

    async def finished() -> bool:
        return (await app.stats("sync")).completed == n

    await run_until(runner, finished)
    assert runner.completed == n and runner.failed == 0
