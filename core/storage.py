"""The `Storage` interface: atomic, set-based primitives with no lifecycle semantics.

All rules (which transitions are legal, backoff, DLQ, removal) live in the kernel. A backend
only promises atomicity: `modify_jobs` locks the named rows, hands each current row to the
kernel's pure ``decide`` function and applies the returned `Change` in the same transaction.
That is how two nodes on one PostgreSQL never both ack, fail or reclaim the same job.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic_core import to_json

from .errors import ConveyorError
from .models import Job, JobState
from .webhooks import Webhook

if TYPE_CHECKING:
    from .schedules import Schedule


@dataclass(frozen=True, slots=True)
class Children:
    """What a change does to the job's blocked dependents, in the same transaction.

    ``release``: the job completed; dependents whose parents have all completed leave
    ``blocked`` (to ``waiting``, or ``delayed`` while their delay runs). ``cascade_error``: the
    job can never complete; every blocked descendant, recursively, goes to the DLQ with this
    text as its ``last_error``."""

    release: bool = False
    cascade_error: str | None = None
    at_ms: int = 0
    """When the change happens (epoch ms): the time written on released and cascaded rows."""


NO_CHILDREN = Children()


@dataclass(frozen=True, slots=True)
class Update:
    """Set these `Job` fields (by field name, Python values) on the row."""

    values: dict[str, Any]
    children: Children = NO_CHILDREN


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove the row (``remove_on_complete`` / ``remove_on_fail``). ``error``: the failure
    that removed it, for its events (the row that would have kept it is gone)."""

    children: Children = NO_CHILDREN
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Leave the row alone and report ``error`` for this id."""

    error: ConveyorError


@dataclass(frozen=True, slots=True)
class Skip:
    """Leave the row alone silently (a maintenance sweep found it already handled)."""


Change = Update | Delete | Reject | Skip
FollowUps = Callable[[UUID, Any, "str | None", dict[str, Any]], "list[tuple[Job, str, ResolveParents]]"]
ResolveParents = Callable[[Sequence[Job], dict[UUID, Job], dict[UUID, int]], list[Job]]
Decide = Callable[[UUID, "Job | None"], Change]
"""Pure function from (id, current row or None) to the change to apply. Runs inside the
backend's transaction, possibly on another thread: it must not block or touch the storage."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A guarded change described as data, so a backend can apply it set-based in one
    statement without loading rows (the ack hot path).

    Rows whose state is in ``from_states`` (and, when ``worker_id`` is set, held by that worker)
    get ``values`` plus their own ``per_id`` values (every entry has the same keys) -- or are
    deleted when their boolean field ``delete_if`` is true. Every other id, including a repeat
    of an id already changed, gets ``refuse(id, current row or None)`` as its error. The
    `Modified` of a changed row reports ``Update(values)`` without its ``per_id`` values (one
    object for the whole batch: the caller has them)."""

    from_states: frozenset[JobState]
    values: dict[str, Any]
    per_id: dict[UUID, dict[str, Any]]
    refuse: Callable[[UUID, Job | None], ConveyorError]
    delete_if: str | None = None
    worker_id: str | None = None
    children: Children = NO_CHILDREN
    follow_ups: FollowUps | None = None
    """Called for each changed row whose metadata holds ``follow_ups``, inside the transaction:
    ``(parent id, parent metadata, parent flow_id, per_id values)`` -> for each follow-up, the
    job, its serialized data and the resolver for its parents. A follow-up that cannot be
    queued (its unique key is taken, an extra parent died) never undoes the parent's change:
    it is stored in the DLQ with the reason as ``last_error``."""


@dataclass(slots=True)
class Modified:
    """Outcome of one id in `Storage.modify_jobs`: what was done, and the job's queue.

    ``before`` is the row as it was when the change came from a `Decide`; a `Transition`
    does not load rows, so there it is None and only ``queue`` is known. Not frozen, unlike
    the changes: a batch ack builds one per job, and a frozen dataclass sets each field
    through ``object.__setattr__`` (bench_instructions.py: 7,000 instructions per job)."""

    id: UUID
    before: Job | None
    change: Change
    queue: str | None = None
    cascaded: tuple[tuple[UUID, str], ...] = ()
    """(id, queue) of the blocked descendants this change sent to the DLQ."""
    spawned: tuple[Job, ...] = ()
    """Follow-up jobs this change created."""


@dataclass(slots=True)
class QueueRow:
    name: str
    paused: bool = False
    counts: dict[str, int] = field(default_factory=dict)


LoggedEvent = tuple[int, dict[str, Any]]
"""(sequence number, event as wire JSON) from the shared event log."""


class EventLog(abc.ABC):
    """The event log of a storage several nodes share: how one node's events reach the others.

    Appended events get increasing sequence numbers in commit order (a reader that has seen
    ``seq`` never later finds a smaller one), so every node reading forward sees each event
    exactly once. Readers are woken by `wait` when something is appended anywhere.
    """

    @abc.abstractmethod
    async def append(self, events: Sequence[dict[str, Any]], now_ms: int) -> None:
        """Append wire events in order, in one transaction, and wake every node's readers."""

    @abc.abstractmethod
    async def last_seq(self) -> int:
        """The newest sequence number (0 when empty): where a new reader starts."""

    @abc.abstractmethod
    async def read(self, after: int, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` events with a sequence number above ``after``, oldest first."""

    @abc.abstractmethod
    async def claim(self, consumer: str, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` events after the cluster-wide cursor of ``consumer``, moving the
        cursor past them in the same transaction: each event is claimed by one node only.
        Empty when there is nothing new or another node is claiming right now. A new consumer
        starts at the newest event."""

    @abc.abstractmethod
    async def wait(self, timeout_s: float) -> None:
        """Return when events may have been appended (by any node) or after ``timeout_s``."""

    @abc.abstractmethod
    async def prune(self, before_ms: int) -> int:
        """Delete events appended before ``before_ms``; returns how many."""


class Storage(abc.ABC):
    """A durable job store. Every method is one transaction; every write is durable on return.

    Implementations translate backend exceptions into `conveyor.errors` (``DuplicateKeyError``
    for unique-key conflicts, ``QueuePausedError``, ``StorageError`` for the rest).
    """

    url: str
    event_log: EventLog | None = None
    """Set by storages that several nodes share (PostgreSQL); None for a single process."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema. Called once before any other method."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release connections. Safe to call twice."""

    @abc.abstractmethod
    async def insert_jobs(
        self,
        jobs: Sequence[Job],
        data_texts: Sequence[str | None] | None = None,
        resolve: ResolveParents | None = None,
    ) -> None:
        """Insert all jobs or none, with a dependency edge for each of their ``depends_on``.
        ``data_texts`` optionally gives each job's ``data`` already serialized (the kernel
        serialized it to check its size), so it is not encoded twice.

        When jobs have parents outside the batch, the backend locks those parent rows, measures
        each one's ancestor depth (longest chain above it, up to ``max_depth + 1``) and calls
        ``resolve(jobs, parents, depths)`` inside the transaction; it returns the jobs to insert
        (their initial state decided from the parents) or raises to refuse the batch.

        Raises ``QueuePausedError`` if any target queue is paused and ``DuplicateKeyError`` if a
        unique key is already held by a non-terminal job of the same queue (or twice in ``jobs``).
        """

    @abc.abstractmethod
    async def claim_jobs(self, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Job]:
        """Move up to ``count`` waiting jobs of an unpaused queue to active, highest priority
        first, then oldest (LIFO jobs ahead of FIFO ones of equal priority). Returns them in that
        order with ``state``, ``started_at``, ``last_heartbeat`` and ``worker_id`` set. A job is
        claimed by exactly one caller, whatever the number of processes or nodes. A caller
        cancelled after the claim is made but before it returns must not strand the jobs: give
        them back (waiting, the attempt not counted), as the SQL backends do."""

    async def claim_jobs_json(self, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[str]:
        """`claim_jobs`, each job returned as its JSON text (what `wire.encode` writes for it):
        the protocols' ``pull`` sends jobs without using them. This default serializes the
        claimed `Job` objects; a backend that can render its rows directly overrides it to skip
        building them (the SQL backends do, unless a subclass overrides `claim_jobs`). Must claim
        exactly as `claim_jobs` does."""
        return [to_json(job).decode() for job in await self.claim_jobs(queue, count, now_ms, worker_id)]

    @abc.abstractmethod
    async def modify_jobs(self, ids: Sequence[UUID], decide: Decide | Transition) -> list[Modified]:
        """Change jobs atomically; one `Modified` per id, in order.

        With a `Decide`: lock the rows, call it once per id in the given order (an id given
        twice sees its own earlier change) and apply the results. With a `Transition`: apply it
        set-based without loading the rows it changes."""

    @abc.abstractmethod
    async def get_job(self, job_id: UUID) -> Job | None: ...

    @abc.abstractmethod
    async def list_jobs(
        self, queue: str, state: str, *, limit: int, offset: int = 0, newest_first: bool = True
    ) -> list[Job]:
        """Jobs of one queue in one state, ordered by last update."""

    @abc.abstractmethod
    async def list_flow(self, flow_id: str, limit: int) -> list[Job]:
        """Jobs with this ``flow_id``, oldest first, at most ``limit``."""

    async def flow_counts(self, flow_id: str) -> dict[str, int]:
        """How many jobs with this ``flow_id`` are in each state (states with none may be left
        out). Asked only of flows with more jobs than a status lists. This default counts
        what `list_flow` returns without a limit; a backend may count with a query instead."""
        return dict(Counter(job.state.value for job in await self.list_flow(flow_id, 2**62)))

    @abc.abstractmethod
    async def promote_delayed(self, now_ms: int) -> int:
        """Move every delayed job whose ``delay_until`` has passed to waiting. Idempotent."""

    @abc.abstractmethod
    async def find_overdue(self, now_ms: int, stall_before_ms: int, limit: int) -> dict[str, list[UUID]]:
        """Candidates for the maintenance sweep (re-checked by ``decide`` under lock):
        ``stalled`` (active, last heartbeat before ``stall_before_ms``), ``timed_out`` (active
        past ``timeout_ms``) and ``expired`` (not started and past ``ttl_ms``)."""

    @abc.abstractmethod
    async def queues(self, queue: str | None = None) -> list[QueueRow]:
        """Every known queue (one with jobs or a pause flag), or just ``queue``, with counts by
        state."""

    @abc.abstractmethod
    async def set_paused(self, queue: str, paused: bool, now_ms: int) -> None:
        """Persist the pause flag of a queue."""

    @abc.abstractmethod
    async def wait_for_jobs(self, queue: str, timeout_s: float) -> None:
        """Return when a job may have become waiting in ``queue`` or after ``timeout_s``.

        Wake-ups may be spurious; callers re-check by claiming."""

    @abc.abstractmethod
    def exclusive(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Best-effort cluster-wide lock for a maintenance sweep: yields whether this node holds
        it. Correctness never depends on it (every sweep is safe to run twice); it saves work."""

    # -- webhook registrations ----------------------------------------------------------------

    @abc.abstractmethod
    async def insert_webhook(self, webhook: Webhook) -> None: ...

    @abc.abstractmethod
    async def list_webhooks(self) -> list[Webhook]:
        """Every registration, oldest first, secrets included (for signing)."""

    @abc.abstractmethod
    async def delete_webhook(self, webhook_id: UUID) -> bool:
        """Remove a registration; False if there was none with that id."""

    # -- schedules ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def insert_schedule(self, schedule: Schedule) -> None:
        """Store a new schedule; raises ``DuplicateKeyError`` if one has its name."""

    @abc.abstractmethod
    async def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""

    @abc.abstractmethod
    async def get_schedule(self, name: str) -> Schedule | None: ...

    @abc.abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; False if there was none with that name."""

    @abc.abstractmethod
    async def set_schedule_paused(self, name: str, paused: bool, now_ms: int) -> bool:
        """Pause or resume a schedule; False if there is none with that name."""

    @abc.abstractmethod
    async def due_schedules(self, now_ms: int, limit: int) -> list[Schedule]:
        """Up to ``limit`` schedules that are not paused, not exhausted (``execution_count <
        max_executions``), whose queue is not paused and whose ``next_run_at`` is at or before
        ``now_ms``, earliest first."""

    @abc.abstractmethod
    async def fire_schedule(self, firing: Firing) -> bool | None:
        """In one transaction: if the schedule is still due at ``firing.due_ms`` (not paused, not
        fired meanwhile by another node), advance it (``next_run_at``, ``last_run_at``,
        ``execution_count`` + 1, paused when that reaches ``max_executions``) and insert
        ``firing.job`` as `insert_jobs` would. Returns True when the job was pushed; False when
        the job's unique key is held by a pending job (the schedule advances, its count does
        not); None when the schedule was no longer due. Raises what `insert_jobs` raises
        otherwise (``QueuePausedError``: nothing changes, the firing stays due)."""


@dataclass(frozen=True, slots=True)
class Firing:
    """One due firing of a schedule: its due time (the guard), its next one, and the job."""

    name: str
    due_ms: int
    next_ms: int
    now_ms: int
    job: Job
    data_text: str | None
