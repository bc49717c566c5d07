"""The job state machine as pure functions: given the current row, what changes.

Each ``decide_*`` factory returns a `Decide` that `Storage.modify_jobs` runs under lock, so
the rule is applied to the row as it is at commit time, not as it was when the caller read it.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

from ._limits import MAX_LOG_ENTRIES
from .errors import ConveyorError, InvalidStateError, JobNotFoundError
from .models import Backoff, Job, JobState, LogEntry
from .storage import Change, Children, Decide, Delete, FollowUps, Reject, Skip, Transition, Update

MAX_BACKOFF_MS = 7 * 86_400_000
"""Backoff delays are capped at 7 days so large attempt counts cannot overflow a timestamp."""

CANCELLABLE = frozenset({JobState.WAITING, JobState.DELAYED, JobState.BLOCKED})
NOT_STARTED = CANCELLABLE


@lru_cache(maxsize=1024)
def ms_to_dt(ms: int) -> datetime:
    """Cached: the jobs and events of one batch share their time, and a claim returns jobs
    pushed in a few batches (a datetime is immutable)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_to_ms(dt: datetime) -> int:
    return round(dt.timestamp() * 1000)


def backoff_ms(strategy: Backoff, base_ms: int, attempt: int) -> int:
    """Delay before retry number ``attempt`` (1 after the first failure).

    fixed = base, linear = base·attempt, exponential = base·2^(attempt−1); capped.
    """
    if strategy is Backoff.FIXED:
        delay = base_ms
    elif strategy is Backoff.LINEAR:
        delay = base_ms * attempt
    else:
        delay = base_ms * (1 << min(attempt - 1, 40))
    return min(delay, MAX_BACKOFF_MS)


def _dead(parent: UUID, what: str, now_ms: int) -> Children:
    """A job that can never complete takes its blocked descendants to the DLQ, naming itself."""
    return Children(cascade_error=f"dependency {parent} {what}: this job can never run", at_ms=now_ms)


def _need(
    job_id: UUID, job: Job | None, allowed: frozenset[JobState], action: str, worker_id: str | None = None
) -> Reject | None:
    """Refuse unless the job exists, is in an ``allowed`` state and -- when the caller names
    itself -- is held by that worker (a worker whose job was reclaimed after a stall must not
    complete or extend the new holder's attempt)."""
    if job is None:
        return Reject(JobNotFoundError(f"job {job_id} not found", details={"id": str(job_id)}))
    if job.state not in allowed:
        wanted = " or ".join(sorted(s.value for s in allowed))
        return Reject(
            InvalidStateError(
                f"cannot {action} job {job_id}: it is {job.state.value}, {action} needs {wanted}",
                details={"id": str(job_id), "state": job.state.value},
            )
        )
    if worker_id is not None and job.worker_id != worker_id:
        return Reject(
            InvalidStateError(
                f"cannot {action} job {job_id}: it is held by worker {job.worker_id!r}, not {worker_id!r}",
                details={"id": str(job_id), "state": job.state.value, "worker_id": job.worker_id},
            )
        )
    return None


_ACTIVE = frozenset({JobState.ACTIVE})


def _refusal(
    action: str, allowed: frozenset[JobState], worker_id: str | None
) -> Callable[[UUID, Job | None], ConveyorError]:
    def refuse(job_id: UUID, job: Job | None) -> ConveyorError:
        refused = _need(job_id, job, allowed, action, worker_id)
        assert refused is not None, "refuse() called for a job the transition allowed"
        return refused.error

    return refuse


def ack_transition(
    results: dict[UUID, dict[str, Any]],
    now_ms: int,
    worker_id: str | None = None,
    follow_ups: FollowUps | None = None,
) -> Transition:
    """active -> completed with its result, or removed when ``remove_on_complete``. ``results``
    maps each id to ``{"result": value}``, its own values as `Transition.per_id` holds them."""
    now = ms_to_dt(now_ms)
    return Transition(
        from_states=_ACTIVE,
        values={"state": JobState.COMPLETED, "completed_at": now, "updated_at": now},
        per_id=results,
        refuse=_refusal("ack", _ACTIVE, worker_id),
        delete_if="remove_on_complete",
        worker_id=worker_id,
        children=Children(release=True, at_ms=now_ms),
        follow_ups=follow_ups,
    )


@dataclass(frozen=True, slots=True)
class FailurePlan:
    """What a failure does to a job: the change, and the facts the caller reports."""

    change: Change
    will_retry: bool
    state: JobState
    next_attempt_ms: int | None


def plan_failure(job: Job, error: str, now_ms: int, *, immediate: bool = False) -> FailurePlan:
    """Retry with backoff while attempts remain, else dead-letter.

    ``immediate`` (stalled jobs: the worker died, not the job) retries without backoff.
    """
    now = ms_to_dt(now_ms)
    attempt = job.attempt + 1
    common: dict[str, Any] = {"attempt": attempt, "last_error": error, "updated_at": now, "worker_id": None}
    if attempt < job.max_attempts:
        delay = 0 if immediate else backoff_ms(job.backoff, job.backoff_delay_ms, attempt)
        if delay > 0:
            due = now_ms + delay
            values = {**common, "state": JobState.DELAYED, "delay_until": ms_to_dt(due)}
            return FailurePlan(Update(values), True, JobState.DELAYED, due)
        return FailurePlan(Update({**common, "state": JobState.WAITING}), True, JobState.WAITING, now_ms)
    if job.remove_on_fail:
        return FailurePlan(Delete(_dead(job.id, "went to the DLQ", now_ms), error), False, JobState.DLQ, None)
    values = {**common, "state": JobState.DLQ, "completed_at": now}
    return FailurePlan(Update(values, _dead(job.id, "went to the DLQ", now_ms)), False, JobState.DLQ, None)


def decide_fail(error: str, now_ms: int, worker_id: str | None = None) -> Decide:
    def decide(job_id: UUID, job: Job | None) -> Change:
        if refused := _need(job_id, job, _ACTIVE, "fail", worker_id):
            return refused
        assert job is not None
        return plan_failure(job, error, now_ms).change

    return decide


def decide_cancel(now_ms: int) -> Decide:
    now = ms_to_dt(now_ms)

    def decide(job_id: UUID, job: Job | None) -> Change:
        if refused := _need(job_id, job, CANCELLABLE, "cancel"):
            return refused
        return Update(
            {"state": JobState.CANCELLED, "completed_at": now, "updated_at": now},
            _dead(job_id, "was cancelled", now_ms),
        )

    return decide


def clamp_progress(value: float) -> int:
    """Progress is an integer percentage: out-of-range reports are clamped, not refused."""
    if isinstance(value, int):
        return max(0, min(100, value))  # exact, and no overflow for huge integers
    return round(min(100.0, max(0.0, value)))


def decide_progress(progress: int, message: str | None, now_ms: int, worker_id: str | None = None) -> Decide:
    now = ms_to_dt(now_ms)

    def decide(job_id: UUID, job: Job | None) -> Change:
        if refused := _need(job_id, job, _ACTIVE, "report progress of", worker_id):
            return refused
        assert job is not None
        values: dict[str, Any] = {"progress": progress, "updated_at": now}
        if message is not None:
            logs = [*job.logs, LogEntry(timestamp=now, message=message)][-MAX_LOG_ENTRIES:]
            values["logs"] = logs
        return Update(values)

    return decide


def decide_heartbeat(now_ms: int, worker_id: str | None = None) -> Decide:
    now = ms_to_dt(now_ms)

    def decide(job_id: UUID, job: Job | None) -> Change:
        if refused := _need(job_id, job, _ACTIVE, "heartbeat", worker_id):
            return refused
        return Update({"last_heartbeat": now, "updated_at": now})

    return decide


def decide_release(now_ms: int, worker_id: str | None = None) -> Decide:
    """active -> waiting, the attempt not counted: the worker gives the job back unrun (it is
    shutting down), so another worker takes it at once instead of after the stall timeout."""
    now = ms_to_dt(now_ms)

    def decide(job_id: UUID, job: Job | None) -> Change:
        if refused := _need(job_id, job, _ACTIVE, "release", worker_id):
            return refused
        return Update(
            {
                "state": JobState.WAITING,
                "worker_id": None,
                "started_at": None,
                "last_heartbeat": None,
                "updated_at": now,
            }
        )

    return decide


def decide_stalled(stall_before_ms: int, now_ms: int) -> Decide:
    """Active job whose last heartbeat is still older than the stall cut-off: retry at once."""

    def decide(job_id: UUID, job: Job | None) -> Change:
        if job is None or job.state is not JobState.ACTIVE:
            return Skip()
        beat = job.last_heartbeat or job.started_at
        if beat is None or dt_to_ms(beat) >= stall_before_ms:
            return Skip()
        silent = now_ms - dt_to_ms(beat)
        error = f"stalled: no heartbeat for {silent} ms (worker {job.worker_id or 'unknown'})"
        return plan_failure(job, error, now_ms, immediate=True).change

    return decide


def decide_timed_out(now_ms: int) -> Decide:
    def decide(job_id: UUID, job: Job | None) -> Change:
        if job is None or job.state is not JobState.ACTIVE or not job.timeout_ms or job.started_at is None:
            return Skip()
        if dt_to_ms(job.started_at) + job.timeout_ms > now_ms:
            return Skip()
        return plan_failure(job, f"timed out after {job.timeout_ms} ms", now_ms).change

    return decide


def decide_expired(now_ms: int) -> Decide:
    """A job that did not start within ``ttl_ms`` of its creation goes to the DLQ (and, with
    ``remove_on_fail``, away, as a final failure does)."""
    now = ms_to_dt(now_ms)

    def decide(job_id: UUID, job: Job | None) -> Change:
        if job is None or job.state not in NOT_STARTED or not job.ttl_ms:
            return Skip()
        if dt_to_ms(job.created_at) + job.ttl_ms > now_ms:
            return Skip()
        error = f"expired: not started within ttl_ms={job.ttl_ms}"
        if job.remove_on_fail:  # dead-lettered, so removed, as a final failure removes it
            return Delete(_dead(job_id, "expired", now_ms), error)
        return Update(
            {"state": JobState.DLQ, "last_error": error, "completed_at": now, "updated_at": now},
            _dead(job_id, "expired", now_ms),
        )

    return decide


def apply(job: Job, change: Change) -> Job | None:
    """The job as it is after ``change`` (None when deleted or unchanged by a refusal)."""
    if isinstance(change, Update):
        return job.model_copy(update=change.values)
    if isinstance(change, Delete):
        return None
    return job
