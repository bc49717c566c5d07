"""The schema, defined once with SQLModel; hot paths use SQLAlchemy Core on these tables.

Times are integer milliseconds since the epoch (UTC) so ordering, comparison and arithmetic
are the same on SQLite and PostgreSQL. JSON payloads are stored as the exact text that the
kernel size-checked.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Integer, Text, text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 6
"""1: jobs, queues, dependencies. 2: webhooks and the shared event log (new tables only).
3: the timeout and TTL indexes hold only jobs that have a timeout or TTL.
4: partial-index predicates without ``IN`` lists (see `PENDING_SQL`). 5: schedules (a new table).
6: the per-queue state index holds only settled jobs (see `SETTLED_SQL`)."""


def _state_in(*states: str) -> str:
    """A set of states as partial-index predicates spell it: an ``OR`` chain, never ``IN
    (...)``. SQLite evaluates an index's predicate for every row written, and for an ``IN``
    list of three or more values it builds a temporary table each time: two such predicates
    cost ~75,000 instructions per job over a push, claim and ack, 28% of all SQLite did
    (tests/benchmarks/RESULTS.md)."""
    return "(" + " OR ".join(f"state = '{state}'" for state in states) + ")"


PENDING_SQL = _state_in("waiting", "delayed", "blocked", "active")
"""A job that still holds its unique key."""
ACTIVE_SQL = "state = 'active'"
DEADLINE_SQL = "state = 'active' AND deadline_at IS NOT NULL"
EXPIRES_SQL = f"expires_at IS NOT NULL AND {_state_in('waiting', 'delayed', 'blocked')}"
SETTLED_SQL = "state <> 'waiting' AND state <> 'active'"
"""Every state but the two a job passes through on the hot path (waiting and active, which the
claim and heartbeat indexes hold): a push, claim and ack touch the per-queue index once, not five
times. Two comparisons, not a chain of six: SQLite evaluates it for every row written. Measured
with bench_instructions.py: 465,480 -> 445,977 instructions per job (-4.2%)."""
"""Partial-index predicates; queries must repeat them verbatim for the planner to use them."""


def _partial(name: str, where: str, *columns: Any, unique: bool = False) -> Index:
    return Index(name, *columns, unique=unique, sqlite_where=text(where), postgresql_where=text(where))


def _ms(nullable: bool = True) -> Column:
    return Column(BigInteger, nullable=nullable)


class JobRow(SQLModel, table=True):
    __tablename__ = "conveyor_jobs"
    # Partial indexes hold only the rows a sweep looks for, so a push touches three B-trees
    # (table, primary key, claim index, queue/state index) and a commit writes few pages to the WAL.
    __table_args__ = (
        # claim: WHERE queue=? AND state='waiting' ORDER BY priority DESC, order_key, id.
        # Only waiting rows are in it: a claim removes one entry, an ack touches nothing.
        _partial("ix_conveyor_jobs_claim", "state = 'waiting'", "queue", text("priority DESC"), "order_key", "id"),
        # counts and listings by queue and state; waiting and active jobs are in the claim and
        # heartbeat indexes, so this one changes only when a job settles (queries: `SETTLED_SQL`)
        _partial("ix_conveyor_jobs_settled", SETTLED_SQL, "queue", "state"),
        _partial("ix_conveyor_jobs_delayed", "state = 'delayed'", "delay_until"),
        _partial("ix_conveyor_jobs_heartbeat", ACTIVE_SQL, "last_heartbeat"),
        # Sweeps read only rows that can still time out or expire: jobs without a timeout or
        # TTL (most) are never in these, so claims and acks skip two B-trees.
        _partial("ix_conveyor_jobs_deadline", DEADLINE_SQL, "deadline_at"),
        _partial("ix_conveyor_jobs_expires", EXPIRES_SQL, "expires_at"),
        _partial("ix_conveyor_jobs_flow", "flow_id IS NOT NULL", "flow_id"),
        # Unique keys are held only by pending jobs: a completed job frees its key.
        _partial(
            "ux_conveyor_jobs_unique_key",
            f"unique_key IS NOT NULL AND {PENDING_SQL}",
            "queue",
            "unique_key",
            unique=True,
        ),
    )

    id: uuid.UUID = Field(primary_key=True)
    custom_id: str | None = None
    name: str
    queue: str = Field(max_length=256)
    data: str | None = Field(default=None, sa_type=Text)
    result: str | None = Field(default=None, sa_type=Text)
    state: str = Field(max_length=16)
    progress: int = 0
    logs: str | None = Field(default=None, sa_type=Text)
    priority: int = Field(default=0, sa_type=Integer)
    order_key: int = Field(sa_column=_ms(nullable=False))
    delay_until: int | None = Field(default=None, sa_column=_ms())
    created_at: int = Field(sa_column=_ms(nullable=False))
    updated_at: int = Field(sa_column=_ms(nullable=False))
    started_at: int | None = Field(default=None, sa_column=_ms())
    completed_at: int | None = Field(default=None, sa_column=_ms())
    max_attempts: int = 3
    attempt: int = 0
    backoff: str = Field(default="exponential", max_length=16)
    backoff_delay_ms: int = Field(default=1000, sa_column=_ms(nullable=False))
    last_error: str | None = Field(default=None, sa_type=Text)
    ttl_ms: int | None = Field(default=None, sa_column=_ms())
    timeout_ms: int | None = Field(default=None, sa_column=_ms())
    unique_key: str | None = None
    tags: str | None = Field(default=None, sa_type=Text)
    group_id: str | None = None
    metadata_: str | None = Field(default=None, sa_column=Column("metadata", Text, nullable=True))
    depends_on: str | None = Field(default=None, sa_type=Text)
    flow_id: str | None = None
    lifo: bool = False
    remove_on_complete: bool = False
    remove_on_fail: bool = False
    worker_id: str | None = None
    last_heartbeat: int | None = Field(default=None, sa_column=_ms())
    deadline_at: int | None = Field(default=None, sa_column=_ms())
    """started_at + timeout_ms while active: the timeout sweep reads one indexed column."""
    expires_at: int | None = Field(default=None, sa_column=_ms())
    """created_at + ttl_ms until the job first starts: the TTL sweep reads one indexed column."""


class QueueRow(SQLModel, table=True):
    __tablename__ = "conveyor_queues"

    name: str = Field(primary_key=True, max_length=256)
    paused: bool = False
    updated_at: int = Field(sa_column=_ms(nullable=False))


class DependencyRow(SQLModel, table=True):
    """One DAG edge: ``child_id`` waits for ``parent_id``. Indexed both ways: children of a
    parent (promotion, cascade) and parents of a child (is everything it waits for done?)."""

    __tablename__ = "conveyor_job_deps"
    __table_args__ = (Index("ix_conveyor_job_deps_parent", "parent_id", "child_id"),)

    child_id: uuid.UUID = Field(primary_key=True)
    parent_id: uuid.UUID = Field(primary_key=True)


class MetaRow(SQLModel, table=True):
    __tablename__ = "conveyor_meta"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_type=Text)


class WebhookRow(SQLModel, table=True):
    __tablename__ = "conveyor_webhooks"

    id: uuid.UUID = Field(primary_key=True)
    url: str = Field(sa_type=Text)
    events: str = Field(sa_type=Text)
    """JSON list of dotted event names; empty: every event."""
    queues: str = Field(sa_type=Text)
    secret: str | None = Field(default=None, sa_type=Text)
    created_at: int = Field(sa_column=_ms(nullable=False))


class ScheduleRow(SQLModel, table=True):
    __tablename__ = "conveyor_schedules"
    # the sweep's query: WHERE paused = false AND next_run_at <= now ORDER BY next_run_at
    __table_args__ = (Index("ix_conveyor_schedules_due", "paused", "next_run_at"),)

    name: str = Field(primary_key=True, max_length=256)
    queue: str = Field(max_length=256)
    job_name: str = Field(sa_type=Text)
    job_data: str | None = Field(default=None, sa_type=Text)
    job_options: str | None = Field(default=None, sa_type=Text)
    cron_expr: str | None = Field(default=None, sa_type=Text)
    every_ms: int | None = Field(default=None, sa_column=_ms())
    timezone: str | None = Field(default=None, sa_type=Text)
    max_executions: int | None = Field(default=None, sa_type=BigInteger)
    execution_count: int = Field(default=0, sa_type=BigInteger)
    paused: bool = False
    last_run_at: int | None = Field(default=None, sa_column=_ms())
    next_run_at: int = Field(sa_column=_ms(nullable=False))
    created_at: int = Field(sa_column=_ms(nullable=False))
    updated_at: int = Field(sa_column=_ms(nullable=False))


class EventRow(SQLModel, table=True):
    """The shared event log (PostgreSQL): appended in commit order, read forward by every node."""

    __tablename__ = "conveyor_events"
    __table_args__ = (Index("ix_conveyor_events_created", "created_at"),)

    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    payload: str = Field(sa_type=Text)
    created_at: int = Field(sa_column=_ms(nullable=False))


class EventConsumerRow(SQLModel, table=True):
    """Cluster-wide cursor of a sink that must see each event once across all nodes."""

    __tablename__ = "conveyor_event_consumers"

    name: str = Field(primary_key=True, max_length=128)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


jobs = JobRow.__table__  # type: ignore[attr-defined]
queues = QueueRow.__table__  # type: ignore[attr-defined]
deps = DependencyRow.__table__  # type: ignore[attr-defined]
meta = MetaRow.__table__  # type: ignore[attr-defined]
webhooks = WebhookRow.__table__  # type: ignore[attr-defined]
schedules = ScheduleRow.__table__  # type: ignore[attr-defined]
events = EventRow.__table__  # type: ignore[attr-defined]
event_consumers = EventConsumerRow.__table__  # type: ignore[attr-defined]
metadata = SQLModel.metadata
