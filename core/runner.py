"""`WorkerRunner`: what ``conveyor worker`` runs. It pulls from its queues, runs each job on the
engine the `WorkerRegistry` routes it to, N at a time, and reports back.

- acks with the engine's return value; fails with the exception's type and text;
- heartbeats every ``heartbeat_s`` (a third of the stall timeout) while a job runs;
- cancels a handler that outlives the job's ``timeout_ms`` and fails the job;
- a job no engine matches stays active (an operator sees it; the stall sweep retries it);
- `stop` (SIGTERM): no more pulls; running jobs get ``grace_s`` to finish, then are cancelled
  and released (back to waiting at once, the attempt not counted). Nothing is lost.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from typing import Any

import anyio
import anyio.to_thread

from ._limits import MAX_ERROR_BYTES
from .errors import ClientConnectionError, ConveyorError, StorageError, ValidationError
from .models import AckResult, Job
from .tasks import IN_THREADS

log = logging.getLogger("conveyor.worker")


def error_text(exc: BaseException) -> str:
    """``Type: message`` as `fail` takes it: NUL written out, cut to the limit, which counts
    bytes, not characters."""
    data = f"{type(exc).__name__}: {exc}".replace("\x00", "\\x00").encode("utf-8", "backslashreplace")
    return data[:MAX_ERROR_BYTES].decode("utf-8", "ignore")


class WorkerRunner:
    def __init__(
        self,
        app: Any,
        queues: list[str],
        *,
        concurrency: int = 10,
        worker_id: str | None = None,
        heartbeat_s: float = 10.0,
        poll_ms: int = 1000,
        grace_s: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not queues:
            raise ValueError("give at least one queue")
        self.app, self.queues, self.concurrency = app, queues, concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.heartbeat_s, self.poll_ms, self.grace_s = heartbeat_s, poll_ms, grace_s
        self.running: dict[Any, Job] = {}
        self.completed = self.failed = self.released = 0
        self._stopping = False
        self._slot_freed: anyio.Event | None = None
        self._jobs_scope: anyio.CancelScope | None = None
        self._acks = _AckBatcher(self)

    def stop(self) -> None:
        """Stop pulling; running jobs finish within ``grace_s`` or are released."""
        if self._stopping:
            return
        self._stopping = True
        stop_waiting = getattr(self.app, "stop_waiting", None)
        if stop_waiting is not None:
            stop_waiting()  # an embedded long-poll returns now
        if self._slot_freed is not None:
            self._slot_freed.set()

    def stop_now(self) -> None:
        """Stop, and release running jobs at once."""
        self.stop()
        if self._jobs_scope is not None:
            self._jobs_scope.cancel()

    async def run(self) -> None:
        """Until `stop`: pull and run. Returns once every job is finished or released."""
        self._slot_freed = anyio.Event()
        threads = anyio.to_thread.current_default_thread_limiter()  # sync handlers run on these
        threads.total_tokens = max(threads.total_tokens, self.concurrency)
        async with anyio.create_task_group() as background:
            background.start_soon(self._heartbeats)
            background.start_soon(self._acks.run)
            await self._pull_and_run()
            await self._acks.close()  # every ack recorded before we return
            background.cancel_scope.cancel()

    async def _pull_and_run(self) -> None:
        assert self._slot_freed is not None
        async with anyio.create_task_group() as jobs:
            self._jobs_scope = jobs.cancel_scope
            turn = 0
            refill = max(1, self.concurrency // 4)  # pull in batches, not one job per freed slot
            while not self._stopping:
                free = self.concurrency - len(self.running)
                if free < (refill if self.running else 1):
                    await self._slot_freed.wait()
                    self._slot_freed = anyio.Event()
                    continue
                queue = self.queues[turn % len(self.queues)]
                turn += 1
                wait = self.poll_ms if len(self.queues) == 1 or turn % len(self.queues) == 0 else 0
                try:
                    pulled = await self.app.pull(queue, free, worker_id=self.worker_id, wait_ms=wait)
                except ConveyorError as exc:
                    log.warning("pull from %s failed: %s; retrying in 1 s", queue, exc.message)
                    await anyio.sleep(1)
                    continue
                for job in pulled:
                    if job.id in self.running:  # reclaimed from this very worker after a stall
                        log.warning(
                            "job %s was claimed again while it runs here: its heartbeats came too late for the "
                            "server's stall timeout (lower --heartbeat-s); the run under way goes on", job.id,
                        )  # fmt: skip
                        continue
                    self.running[job.id] = job
                    jobs.start_soon(self._run_job, job)
            with anyio.move_on_after(self.grace_s if self.running else 0):
                while self.running:
                    await self._slot_freed.wait()
                    self._slot_freed = anyio.Event()
            if self.running:
                log.warning(
                    "%d job(s) still running after %.0f s: cancelling and releasing", len(self.running), self.grace_s
                )
                jobs.cancel_scope.cancel()

    async def _run_job(self, job: Job) -> None:
        try:
            try:
                engine = self.app.workers.engine_for(job)
                worker = await self.app.workers.create_worker(engine)
            except ConveyorError as exc:
                log.error("job %s left active: %s", job.id, exc.message)
                return
            try:
                outcome = await self._execute(worker, job)
            except anyio.get_cancelled_exc_class():
                if job.id in IN_THREADS:  # a sync handler runs on in its thread: released, it would run twice
                    log.warning("job %s left active: its sync handler cannot be stopped", job.id)
                    raise
                with anyio.CancelScope(shield=True):
                    await self._report(job.id, ("release", None))
                raise
            with anyio.CancelScope(shield=True):
                await self._report(job.id, outcome)
        finally:
            self.running.pop(job.id, None)
            if self._slot_freed is not None:
                self._slot_freed.set()

    async def _execute(self, worker: Any, job: Job) -> tuple[str, Any]:
        try:
            if not job.timeout_ms:
                return ("ack", await worker.process(job))
            with anyio.move_on_after(job.timeout_ms / 1000):
                return ("ack", await worker.process(job))
            return ("fail", f"TimeoutError: the job ran longer than its timeout_ms ({job.timeout_ms} ms)")
        except anyio.get_cancelled_exc_class() as exc:
            if anyio.current_effective_deadline() == -math.inf:
                raise  # the runner is stopping: the job is released
            # raised by the handler itself (a cancelled task of its own): a failure like any other
            return ("fail", error_text(exc))
        except Exception as exc:  # noqa: BLE001 - the job's failure is reported, the worker goes on
            return ("fail", error_text(exc))

    async def _report(self, job_id: Any, outcome: tuple[str, Any]) -> None:
        kind, value = outcome
        try:
            if kind == "ack":
                self._acks.add(job_id, value)
            elif kind == "fail":
                await self.app.fail(job_id, value, worker_id=self.worker_id)
                self.failed += 1
            else:
                await self.app.release(job_id, worker_id=self.worker_id)
                self.released += 1
        except ConveyorError as exc:  # e.g. the job was reclaimed after a stall: not ours now
            log.warning("job %s: could not %s: %s", job_id, kind, exc.message)

    async def _heartbeats(self) -> None:
        """One loop for every running job (not a task per job): each gets a heartbeat every
        ``heartbeat_s`` while it runs."""
        while True:
            await anyio.sleep(self.heartbeat_s)
            for job_id in [*self.running, *self._acks.pending()]:
                try:
                    await self.app.heartbeat(job_id, worker_id=self.worker_id)
                except ConveyorError as exc:
                    if job_id in self.running:
                        log.warning("job %s: heartbeat refused: %s", job_id, exc.message)


class _AckBatcher:
    """Acks wait here and go out together: each ``ack_batch`` carries every ack that arrived
    while the previous one was in flight (one request and one commit for many jobs, never a
    wait on a timer)."""

    def __init__(self, runner: WorkerRunner) -> None:
        self.runner = runner
        self._waiting: list[tuple[Any, Any]] = []
        self._sending: list[tuple[Any, Any]] = []
        self._arrived: anyio.Event | None = None
        self._finished: anyio.Event | None = None
        self._closing = False
        self._give_up_at = math.inf

    def pending(self) -> list[Any]:
        """Ids of jobs whose ack is not through yet (heartbeated meanwhile)."""
        return [job_id for job_id, _ in (*self._sending, *self._waiting)]

    def add(self, job_id: Any, result: Any) -> None:
        self._waiting.append((job_id, result))
        if self._arrived is not None:
            self._arrived.set()

    async def run(self) -> None:
        self._finished = anyio.Event()
        try:
            await self._loop()
        finally:
            self._finished.set()

    async def _loop(self) -> None:
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            self._sending, self._waiting = self._waiting[:1000], self._waiting[1000:]
            with anyio.CancelScope(shield=True):
                await self._send(self._sending)
            self._sending = []

    async def close(self) -> None:
        """Wait until every waiting ack is sent (acks that keep failing, for up to the
        runner's ``grace_s``)."""
        self._closing = True
        self._give_up_at = anyio.current_time() + self.runner.grace_s
        if self._arrived is not None:
            self._arrived.set()
        if self._finished is not None:
            await self._finished.wait()

    async def _send(self, batch: list[tuple[Any, Any]]) -> None:
        """Ack ``batch``; acks lost to a connection or storage failure are sent again (the jobs
        heartbeated meanwhile) until they go through or the runner's ``grace_s`` after `close`
        is spent. A result the queue refuses (not JSON, too large) fails its job, naming why."""
        runner = self.runner
        items = [{"id": j, "result": r} for j, r in batch]
        delay = 0.5
        while True:
            try:
                results = await runner.app.ack_batch(items, worker_id=runner.worker_id)
                break
            except ValidationError:  # an item refused for the whole batch (by the client, or a 413): one by one
                results = [await self._ack_one(job_id, result) for job_id, result in batch]
                break
            except (ClientConnectionError, StorageError) as exc:
                if self._closing and anyio.current_time() >= self._give_up_at:
                    log.error("acking %d job(s) failed: %s (given up at shutdown)", len(batch), exc.message)
                    return
                log.warning("acking %d job(s) failed: %s; trying again in %.1f s", len(batch), exc.message, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except ConveyorError as exc:
                log.warning("acking %d job(s) failed: %s", len(batch), exc.message)
                return
        for result in results:
            if result.ok:
                runner.completed += 1
            elif (result.error or {}).get("code") == ValidationError.code:
                message = (result.error or {}).get("message")
                await runner._report(result.id, ("fail", f"the result was refused: {message}"))
            else:
                log.warning("job %s: could not ack: %s", result.id, (result.error or {}).get("message"))

    async def _ack_one(self, job_id: Any, result: Any) -> AckResult:
        try:
            await self.runner.app.ack(job_id, result, worker_id=self.runner.worker_id)
        except ConveyorError as exc:
            return AckResult(id=str(job_id), ok=False, error={"code": exc.code, "message": exc.message})
        return AckResult(id=str(job_id), ok=True)
