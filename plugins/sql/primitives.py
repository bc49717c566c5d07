"""The storage primitives as synchronous SQLAlchemy Core functions over one connection.

Both backends run exactly these functions inside a transaction: SQLite on its writer thread,
PostgreSQL through ``AsyncConnection.run_sync``. Dialect differences (``FOR UPDATE SKIP
LOCKED``, upsert) are expressed through SQLAlchemy, so the SQL of each primitive exists once.
Each function returns its result and the set of queues that gained waiting jobs (for wake-ups).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, bindparam, case, delete, func, insert, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from conveyor.errors import DuplicateKeyError, QueuePausedError, StorageError
from conveyor.lifecycle import apply
from conveyor.models import Job, JobState
from conveyor.storage import Decide, Delete, Modified, QueueRow, Update

from .codec import decode_job, encode_job, encode_values
from .tables import SCHEMA_VERSION, jobs, meta, metadata, queues

Woken = set[str]
PENDING = ("waiting", "delayed", "blocked", "active")
_CLAIM_ORDER = (jobs.c.priority.desc(), jobs.c.order_key, jobs.c.id)


def _paused(conn: Connection, names: Sequence[str]) -> list[str]:
    rows = conn.execute(select(queues.c.name).where(queues.c.name.in_(names), queues.c.paused.is_(True)))
    return [r[0] for r in rows]


def insert_jobs(conn: Connection, batch: Sequence[tuple[Job, str | None]]) -> Woken:
    names = sorted({job.queue for job, _ in batch})
    if paused := _paused(conn, names):
        raise QueuePausedError(f"queue {paused[0]!r} is paused", details={"queue": paused[0]})
    _check_unique_keys(conn, [job for job, _ in batch])
    try:
        conn.execute(insert(jobs), [encode_job(job, data_text=text) for job, text in batch])
    except IntegrityError as exc:
        if "unique_key" in str(exc.orig):
            raise DuplicateKeyError("unique_key is already held by a pending job (concurrent push)") from None
        raise StorageError(f"insert refused by the database: {exc.orig}") from None
    return {job.queue for job, _ in batch if job.state is JobState.WAITING}


def _check_unique_keys(conn: Connection, batch: Sequence[Job]) -> None:
    """Name the conflicting key; the partial unique index still decides races atomically."""
    keyed = [(job.queue, job.unique_key) for job in batch if job.unique_key is not None]
    if not keyed:
        return
    seen: set[tuple[str, str]] = set()
    for pair in keyed:
        if pair in seen:
            raise _duplicate(*pair, "twice in this batch")
        seen.add(pair)
    by_queue: dict[str, list[str]] = defaultdict(list)
    for queue, key in keyed:
        by_queue[queue].append(key)
    for queue, keys in by_queue.items():
        held = conn.execute(
            select(jobs.c.unique_key, jobs.c.id)
            .where(jobs.c.queue == queue, jobs.c.unique_key.in_(keys), jobs.c.state.in_(PENDING))
            .limit(1)
        ).first()
        if held is not None:
            raise _duplicate(queue, held[0], f"by pending job {held[1]}")


def _duplicate(queue: str, key: str, where: str) -> DuplicateKeyError:
    return DuplicateKeyError(
        f"unique_key {key!r} in queue {queue!r} is already held {where}",
        details={"queue": queue, "unique_key": key},
    )


def claim_jobs(conn: Connection, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Job]:
    if _paused(conn, [queue]):
        return []
    chosen = (
        select(jobs.c.id)
        .where(jobs.c.queue == queue, jobs.c.state == "waiting")
        .order_by(*_CLAIM_ORDER)
        .limit(count)
        .with_for_update(skip_locked=True)
    )
    stmt = (
        update(jobs)
        .where(jobs.c.id.in_(chosen.scalar_subquery()), jobs.c.state == "waiting")
        .values(
            state="active",
            started_at=now_ms,
            last_heartbeat=now_ms,
            updated_at=now_ms,
            worker_id=worker_id,
            expires_at=None,
            deadline_at=case((jobs.c.timeout_ms.is_not(None), literal(now_ms) + jobs.c.timeout_ms), else_=None),
        )
        .returning(*jobs.c)
    )
    claimed = [decode_job(row._mapping) for row in conn.execute(stmt)]
    claimed.sort(key=lambda j: (-j.priority, -j.created_at.timestamp() if j.lifo else j.created_at.timestamp(), j.id))
    return claimed


def modify_jobs(conn: Connection, ids: Sequence[UUID], decide: Decide) -> tuple[list[Modified], Woken]:
    unique_ids = sorted(set(ids))  # one lock order everywhere: no deadlocks between nodes
    rows = conn.execute(select(jobs).where(jobs.c.id.in_(unique_ids)).order_by(jobs.c.id).with_for_update())
    current: dict[UUID, Job | None] = {row.id: decode_job(row._mapping) for row in rows}
    results: list[Modified] = []
    pending: dict[UUID, dict[str, Any]] = {}
    deleted: set[UUID] = set()
    woken: Woken = set()
    for job_id in ids:
        before = current.get(job_id)
        change = decide(job_id, before)
        results.append(Modified(job_id, before, change))
        if before is None:
            continue
        if isinstance(change, Update):
            pending.setdefault(job_id, {}).update(change.values)
            if change.values.get("state") is JobState.WAITING:
                woken.add(before.queue)
            current[job_id] = apply(before, change)
        elif isinstance(change, Delete):
            deleted.add(job_id)
            pending.pop(job_id, None)
            current[job_id] = None
    _write_updates(conn, pending)
    if deleted:
        conn.execute(delete(jobs).where(jobs.c.id.in_(sorted(deleted))))
    return results, woken


def _write_updates(conn: Connection, pending: dict[UUID, dict[str, Any]]) -> None:
    """One executemany per distinct set of columns (a batch ack is one statement)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for job_id, values in pending.items():
        encoded = encode_values(values)
        groups[tuple(sorted(encoded))].append({"_id": job_id, **{f"v_{k}": v for k, v in encoded.items()}})
    for columns, params in groups.items():
        stmt = (
            update(jobs)
            .where(jobs.c.id == bindparam("_id"))
            .values({c: bindparam(f"v_{c}") for c in columns})
        )
        conn.execute(stmt, params)


def get_job(conn: Connection, job_id: UUID) -> Job | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    return None if row is None else decode_job(row._mapping)


def list_jobs(conn: Connection, queue: str, state: str, limit: int, offset: int, newest_first: bool) -> list[Job]:
    order = (jobs.c.updated_at.desc(), jobs.c.id.desc()) if newest_first else (jobs.c.updated_at, jobs.c.id)
    stmt = select(jobs).where(jobs.c.queue == queue, jobs.c.state == state).order_by(*order).limit(limit).offset(offset)
    return [decode_job(row._mapping) for row in conn.execute(stmt)]


def promote_delayed(conn: Connection, now_ms: int) -> tuple[int, Woken]:
    stmt = (
        update(jobs)
        .where(jobs.c.state == "delayed", jobs.c.delay_until <= now_ms)
        .values(state="waiting", updated_at=now_ms)
        .returning(jobs.c.queue)
    )
    promoted = [row[0] for row in conn.execute(stmt)]
    return len(promoted), set(promoted)


def find_overdue(conn: Connection, now_ms: int, stall_before_ms: int, limit: int) -> dict[str, list[UUID]]:
    def ids(*where: Any) -> list[UUID]:
        return [r[0] for r in conn.execute(select(jobs.c.id).where(*where).limit(limit))]

    return {
        "stalled": ids(jobs.c.state == "active", jobs.c.last_heartbeat < stall_before_ms),
        "timed_out": ids(jobs.c.deadline_at <= now_ms, jobs.c.state == "active"),
        "expired": ids(jobs.c.expires_at <= now_ms, jobs.c.state.in_(("waiting", "delayed", "blocked"))),
    }


def list_queues(conn: Connection, queue: str | None) -> list[QueueRow]:
    counts = select(jobs.c.queue, jobs.c.state, func.count()).group_by(jobs.c.queue, jobs.c.state)
    flags = select(queues.c.name, queues.c.paused)
    if queue is not None:
        counts = counts.where(jobs.c.queue == queue)
        flags = flags.where(queues.c.name == queue)
    found: dict[str, QueueRow] = {}
    for name, paused in conn.execute(flags):
        found[name] = QueueRow(name, bool(paused))
    for name, state, n in conn.execute(counts):
        found.setdefault(name, QueueRow(name)).counts[state] = n
    return [found[name] for name in sorted(found)]


def set_paused(conn: Connection, queue: str, paused: bool, now_ms: int) -> Woken:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(queues).values(name=queue, paused=paused, updated_at=now_ms)
    conn.execute(stmt.on_conflict_do_update(index_elements=[queues.c.name], set_={"paused": paused, "updated_at": now_ms}))
    return set() if paused else {queue}



def ensure_schema(conn: Connection) -> None:
    """Create missing tables and record the schema version; refuse a newer database."""
    metadata.create_all(conn, checkfirst=True)
    found = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if found is None:
        conn.execute(insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
    elif int(found) > SCHEMA_VERSION:
        raise StorageError(
            f"database schema version {found} is newer than this Conveyor's ({SCHEMA_VERSION}); upgrade Conveyor"
        )
    elif int(found) < SCHEMA_VERSION:
        # Migrations from older versions go here, one function per version step.
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
