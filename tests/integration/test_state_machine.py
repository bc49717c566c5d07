"""Property-based test of the job state machine (hypothesis, stateful).

Random sequences of push, pull, ack, fail, cancel, progress, heartbeat and clock moves with
maintenance sweeps run against a real storage next to an independent model of the rules.
After every step: no job is lost, every job is in the state the model predicts, counts agree,
and no job sits in an illegal state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conveyor import InvalidStateError, JobState, SyncConveyor

from ..conftest import PG_URL, FakeClock, require_postgres

STALL = 30_000
LEGAL = {JobState.WAITING, JobState.DELAYED, JobState.ACTIVE, JobState.COMPLETED, JobState.DLQ, JobState.CANCELLED}


@dataclass
class ModelJob:
    priority: int
    max_attempts: int
    backoff_ms: int
    remove_on_complete: bool
    state: JobState
    attempt: int = 0
    due: int = 0
    beat: int = 0
    seq: int = 0


class QueueMachine(RuleBasedStateMachine):
    url = "sqlite:///:memory:"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.app = SyncConveyor(self._url(), clock=self.clock, maintenance=False, plugin_autoload=False).open()
        self.jobs: dict[UUID, ModelJob] = {}
        self.removed: set[UUID] = set()
        self.seq = 0

    def _url(self) -> str:
        return self.url

    def teardown(self) -> None:
        self.app.close()

    # -- helpers -------------------------------------------------------------------------------

    def ids_in(self, *states: JobState) -> list[UUID]:
        return sorted(i for i, j in self.jobs.items() if j.state in states)

    def expect_refusal(self, call: Callable[[], object]) -> None:
        with pytest.raises(InvalidStateError):
            call()

    # -- rules -------------------------------------------------------------------------------------

    @rule(
        priority=st.integers(-2, 2),
        delay=st.sampled_from([0, 0, 500, 5_000]),
        max_attempts=st.integers(1, 3),
        backoff=st.sampled_from([0, 1_000]),
        remove=st.booleans(),
    )
    def push(self, priority: int, delay: int, max_attempts: int, backoff: int, remove: bool) -> None:
        job_id = self.app.push(
            "q", "job", {"seq": self.seq}, priority=priority, delay_ms=delay, max_attempts=max_attempts,
            backoff="fixed", backoff_delay_ms=backoff, remove_on_complete=remove,
        )  # fmt: skip
        state = JobState.DELAYED if delay else JobState.WAITING
        self.jobs[job_id] = ModelJob(
            priority, max_attempts, backoff, remove, state, due=self.clock.now + delay, seq=self.seq
        )
        self.seq += 1
        self.clock.advance(1)

    @rule(count=st.integers(1, 4))
    def pull(self, count: int) -> None:
        waiting = sorted(self.ids_in(JobState.WAITING), key=lambda i: (-self.jobs[i].priority, self.jobs[i].seq))
        pulled = self.app.pull("q", count)
        assert [j.id for j in pulled] == waiting[:count], "pull must follow priority, then age"
        for job in pulled:
            model = self.jobs[job.id]
            assert job.data == {"seq": model.seq} and job.attempt == model.attempt
            model.state, model.beat = JobState.ACTIVE, self.clock.now

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model.state is not JobState.ACTIVE:
            self.expect_refusal(lambda: self.app.ack(job_id))
            return
        self.app.ack(job_id, {"done": model.seq})
        if model.remove_on_complete:
            del self.jobs[job_id]
            self.removed.add(job_id)
        else:
            model.state = JobState.COMPLETED

    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        if not self.jobs:
            return
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model.state is not JobState.ACTIVE:
            self.expect_refusal(lambda: self.app.fail(job_id, "nope"))
            return
        outcome = self.app.fail(job_id, f"error {model.attempt + 1}")
        self._retry_or_dlq(model, immediate=False)
        assert outcome.state is model.state and outcome.will_retry == (model.state is not JobState.DLQ)

    def _retry_or_dlq(self, model: ModelJob, immediate: bool) -> None:
        model.attempt += 1
        if model.attempt >= model.max_attempts:
            model.state = JobState.DLQ
        elif model.backoff_ms and not immediate:
            model.state, model.due = JobState.DELAYED, self.clock.now + model.backoff_ms
        else:
            model.state = JobState.WAITING

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model.state in (JobState.WAITING, JobState.DELAYED):
            self.app.cancel(job_id)
            model.state = JobState.CANCELLED
        else:
            self.expect_refusal(lambda: self.app.cancel(job_id))

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), progress=st.integers(-10, 110))
    def progress_or_heartbeat(self, data: st.DataObject, progress: int) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model.state is not JobState.ACTIVE:
            self.expect_refusal(lambda: self.app.heartbeat(job_id))
            return
        self.app.progress(job_id, progress, "step")
        self.app.heartbeat(job_id)
        model.beat = self.clock.now
        assert self.app.get(job_id).progress == max(0, min(100, progress))  # type: ignore[union-attr]

    @rule(ms=st.sampled_from([1, 499, 1_000, 5_000, STALL + 1]))
    def time_passes(self, ms: int) -> None:
        self.clock.advance(ms)
        self.app.call(self.app.app.run_maintenance)
        now = self.clock.now
        for model in self.jobs.values():
            if model.state is JobState.DELAYED and model.due <= now:
                model.state = JobState.WAITING
        for model in self.jobs.values():  # stalls are found after promotion, retried at once
            if model.state is JobState.ACTIVE and model.beat < now - STALL:
                self._retry_or_dlq(model, immediate=True)

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def storage_matches_the_model(self) -> None:
        counts = {state: 0 for state in LEGAL}
        for job_id, model in self.jobs.items():
            job = self.app.get(job_id)
            assert job is not None, f"job {job_id} was lost"
            assert job.state in LEGAL
            assert job.state is model.state, f"{job_id}: storage says {job.state}, rules say {model.state}"
            assert job.attempt == model.attempt <= job.max_attempts
            if job.state is JobState.DLQ:
                assert job.last_error
            if job.state is JobState.ACTIVE:
                assert job.started_at is not None
            counts[job.state] += 1
        for job_id in self.removed:
            assert self.app.get(job_id) is None
        stats = self.app.stats("q")
        for state, n in counts.items():
            assert getattr(stats, state.value) == n, f"count of {state.value}"
        assert stats.failed == 0 and stats.blocked == 0


class TestStateMachineSqlite(QueueMachine.TestCase):  # type: ignore[name-defined]
    settings = settings(max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck))


class PostgresMachine(QueueMachine):
    def _url(self) -> str:
        self.schema = f"h_{uuid.uuid4().hex[:12]}"
        return f"{PG_URL}?schema={self.schema}"

    def teardown(self) -> None:
        super().teardown()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


class TestStateMachinePostgres(PostgresMachine.TestCase):  # type: ignore[name-defined]
    settings = settings(max_examples=15, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck))

    def setUp(self) -> None:
        require_postgres()
