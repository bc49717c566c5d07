"""The storage primitives as synchronous functions over one SQLAlchemy connection.

Both backends run exactly these functions inside a transaction: SQLite in its group commit on
the event loop, PostgreSQL through ``AsyncConnection.run_sync``. Hot statements go straight to the driver
cursor with SQL written once (see `dialect`); cold ones use SQLAlchemy Core. Each function that
can make jobs waiting also returns the set of queues it woke, for wake-ups after commit.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from conveyor.errors import ConveyorError, DuplicateKeyError, QueuePausedError, StorageError
from conveyor.lifecycle import apply
from conveyor.models import Job, JobState
from conveyor.storage import Decide, Delete, Modified, QueueRow, Reject, ResolveParents, Transition, Update

from .codec import decode_job, encode_job, encode_value, encode_values
from .dialect import COLUMN_LIST, TABLE, Dialect, chunks, cursor_of
from .inserts import insert_statements
from .tables import (
    ACTIVE_SQL,
    DEADLINE_SQL,
    EXPIRES_SQL,
    PENDING_SQL,
    SCHEMA_VERSION,
    SETTLED_SQL,
    deps,
    jobs,
    meta,
    metadata,
    queues,
)  # fmt: skip

Woken = set[str]
DEPS = deps.name
_NO_VALUES: dict[str, Any] = {}


def _paused(cur: Any, d: Dialect, names: Sequence[str]) -> list[str]:
    paused = []
    for chunk in chunks(names):
        cur.execute(
            d.sql(f"SELECT name FROM conveyor_queues WHERE paused = ? AND name IN ({d.placeholders(len(chunk))})"),
            (True, *chunk),
        )
        paused += [row[0] for row in cur.fetchall()]
    return paused


def insert_jobs(
    conn: Connection,
    jobs: Sequence[Job],
    data_texts: Sequence[str | None],
    resolve: ResolveParents | None = None,
    check_paused: bool = True,
) -> Woken:
    """Insert jobs (``data_texts``: each one's data serialized, or None to serialize it here)
    and their edges. ``check_paused=False`` is for follow-ups, which are part of their parent's
    ack: a paused queue keeps them, it does not refuse the parent's completion."""
    cur, d = cursor_of(conn)
    names = sorted({job.queue for job in jobs})
    if check_paused and (paused := _paused(cur, d, names)):
        raise QueuePausedError(f"queue {paused[0]!r} is paused: it accepts no new jobs", details={"queue": paused[0]})
    _check_unique_keys(cur, d, jobs)
    edges = [(job.id, parent) for job in jobs for parent in job.depends_on]
    if edges and resolve is not None:
        inside = {job.id for job in jobs}
        outside = sorted({parent for _, parent in edges if parent not in inside})
        parents = _select_for_update(cur, d, outside)  # a parent cannot die while we look
        jobs = resolve(jobs, parents, _ancestor_depths(cur, d, sorted(parents)))
    rows = [encode_job(job, d, text) for job, text in zip(jobs, data_texts, strict=True)]
    try:
        for sql, params in insert_statements(d, rows):
            cur.execute(sql, params)
    except Exception as exc:
        if "unique" in str(exc).lower() and "unique_key" in str(exc):
            raise DuplicateKeyError("unique_key is already held by a pending job (concurrent push)") from None
        raise
    if edges:
        cur.executemany(
            d.sql(f"INSERT INTO {DEPS} (child_id, parent_id) VALUES (?, ?)"),
            [(d.encode_id(child), d.encode_id(parent)) for child, parent in edges],
        )
    return {job.queue for job in jobs if job.state is JobState.WAITING}


def _ancestor_depths(cur: Any, d: Dialect, ids: Sequence[UUID], cap: int = 64) -> dict[UUID, int]:
    """Longest chain of unfinished ancestors above each job (0 when none), up to ``cap``.
    Completed ancestors do not count: the limit bounds what is still waiting, so a pipeline
    of follow-ups can run for any number of generations."""
    depths: dict[UUID, int] = {}
    for chunk in chunks(ids):
        cur.execute(
            d.sql(
                f"WITH RECURSIVE up(root, id, depth) AS ("
                f"SELECT id, id, 0 FROM {TABLE} WHERE id IN ({d.placeholders(len(chunk))}) "
                f"UNION SELECT up.root, e.parent_id, up.depth + 1 FROM {DEPS} e JOIN up ON e.child_id = up.id "
                f"JOIN {TABLE} p ON p.id = e.parent_id AND p.state <> 'completed' "
                "WHERE up.depth < ?) SELECT root, max(depth) FROM up GROUP BY root"
            ),
            [*(d.encode_id(i) for i in chunk), cap],
        )
        depths.update((d.decode_id(root), depth) for root, depth in cur.fetchall())
    return depths


def _release_children(cur: Any, d: Dialect, parents: Sequence[UUID], now_ms: int) -> Woken:
    """Blocked children of ``parents`` whose parents have all completed (or were removed on
    completion) leave ``blocked``. Children are locked first, in id order: on PostgreSQL two
    parents completing at once on two nodes then see each other's commit, so the last one
    to finish releases the child. Work goes in chunks: a parent may have 100,000 children."""
    children: list[Any] = []
    for chunk in chunks(parents):
        keys = [d.encode_id(p) for p in chunk]
        cur.execute(
            d.sql(
                f"SELECT id FROM {TABLE} WHERE state = 'blocked' AND id IN (SELECT child_id FROM {DEPS} "
                f"WHERE parent_id IN ({d.placeholders(len(keys))})) ORDER BY id{d.for_update}"
            ),
            keys,
        )
        children += [row[0] for row in cur.fetchall()]
    woken: Woken = set()
    for chunk in chunks(children):
        cur.execute(
            d.sql(
                f"UPDATE {TABLE} SET state = CASE WHEN delay_until IS NOT NULL AND delay_until > ? "
                "THEN 'delayed' ELSE 'waiting' END, updated_at = ? "
                f"WHERE id IN ({d.placeholders(len(chunk))}) AND state = 'blocked' AND NOT EXISTS ("
                f"SELECT 1 FROM {DEPS} e JOIN {TABLE} p ON p.id = e.parent_id "
                f"WHERE e.child_id = {TABLE}.id AND p.state <> 'completed') RETURNING queue, state"
            ),
            [now_ms, now_ms, *chunk],
        )
        woken |= {queue for queue, state in cur.fetchall() if state == "waiting"}
    return woken


def _cascade(cur: Any, d: Dialect, root: UUID, error: str, now_ms: int) -> tuple[tuple[UUID, str], ...]:
    """Every blocked descendant of ``root``, recursively, goes to the DLQ naming the cause.

    Repeated until a pass changes nothing: on PostgreSQL a pass sees the edges committed
    before it started, so a child pushed onto a descendant while the previous pass waited for
    that descendant's row lock is caught by the next pass."""
    descendants = (
        f"WITH RECURSIVE down(id) AS (SELECT child_id FROM {DEPS} WHERE parent_id = ? "
        f"UNION SELECT e.child_id FROM {DEPS} e JOIN down ON e.parent_id = down.id) "
    )
    cascaded: list[tuple[UUID, str]] = []
    while True:
        if d.postgres:  # take the row locks in id order, as every other writer does
            cur.execute(
                d.sql(
                    f"{descendants}SELECT id FROM {TABLE} WHERE id IN (SELECT id FROM down) AND state = 'blocked' ORDER BY id FOR UPDATE"
                ),
                (d.encode_id(root),),
            )
        cur.execute(
            d.sql(
                f"{descendants}UPDATE {TABLE} SET state = 'dlq', last_error = ?, completed_at = ?, updated_at = ? "
                "WHERE id IN (SELECT id FROM down) AND state = 'blocked' RETURNING id, queue"
            ),
            (d.encode_id(root), error, now_ms, now_ms),
        )
        found = [(d.decode_id(job_id), queue) for job_id, queue in cur.fetchall()]
        if not found:
            return tuple(cascaded)
        cascaded += found


def _apply_children(cur: Any, d: Dialect, results: list[Modified]) -> tuple[list[Modified], Woken]:
    """Run each change's `Children` effect; record cascades on the change that caused them."""
    effects = [(m, m.change.children) for m in results if isinstance(m.change, (Update, Delete))]
    releasing = [(m, c) for m, c in effects if c.release]
    woken = _release_children(cur, d, [m.id for m, _ in releasing], releasing[0][1].at_ms) if releasing else set()
    cascades = {m.id: _cascade(cur, d, m.id, c.cascade_error, c.at_ms) for m, c in effects if c.cascade_error}
    if not cascades:
        return results, woken
    return [replace(m, cascaded=cascades[m.id]) if m.id in cascades else m for m in results], woken


def _check_unique_keys(cur: Any, d: Dialect, batch: Sequence[Job]) -> None:
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
        for chunk in chunks(keys):
            cur.execute(
                d.sql(
                    f"SELECT unique_key, id FROM {TABLE} WHERE queue = ? AND unique_key IS NOT NULL "
                    f"AND {PENDING_SQL} AND unique_key IN ({d.placeholders(len(chunk))}) LIMIT 1"
                ),
                (queue, *chunk),
            )
            held = cur.fetchone()
            if held is not None:
                raise _duplicate(queue, held[0], f"by pending job {d.decode_id(held[1])}")


def _duplicate(queue: str, key: str, where: str) -> DuplicateKeyError:
    return DuplicateKeyError(
        f"unique_key {key!r} in queue {queue!r} is already held {where}",
        details={"queue": queue, "unique_key": key},
    )


def _rows_in_id_order(cur: Any, d: Dialect, ids: Sequence[UUID], columns: str) -> Iterator[Sequence[Any]]:
    """``columns`` of the rows with these ids, in chunks, in id order and locked (PostgreSQL):
    one lock order everywhere, so two nodes never deadlock on each other's rows."""
    for part in chunks(ids):
        chunk = [d.encode_id(i) for i in part]
        cur.execute(
            d.sql(
                f"SELECT {columns} FROM {TABLE} WHERE id IN ({d.placeholders(len(chunk))}) ORDER BY id{d.for_update}"
            ),
            chunk,
        )
        yield from cur.fetchall()


def _delete_rows(cur: Any, d: Dialect, keys: Sequence[Any]) -> None:
    """Delete the rows with these encoded ids, in chunks (SQLite before 3.32 binds 999 values)."""
    for chunk in chunks(keys):
        cur.execute(d.sql(f"DELETE FROM {TABLE} WHERE id IN ({d.placeholders(len(chunk))})"), chunk)


def _lock_in_order(cur: Any, d: Dialect, ids: Sequence[UUID]) -> None:
    for _ in _rows_in_id_order(cur, d, ids, "id"):
        pass


def _select_for_update(cur: Any, d: Dialect, ids: Sequence[UUID]) -> dict[UUID, Job]:
    jobs = (decode_job(row, d) for row in _rows_in_id_order(cur, d, ids, COLUMN_LIST))
    return {job.id: job for job in jobs}


def modify_jobs(conn: Connection, ids: Sequence[UUID], decide: Decide) -> tuple[list[Modified], Woken]:
    cur, d = cursor_of(conn)
    # One lock order everywhere (sorted ids) so two nodes never deadlock on each other.
    current: dict[UUID, Job | None] = dict(_select_for_update(cur, d, sorted(set(ids))))
    results: list[Modified] = []
    pending: dict[UUID, dict[str, Any]] = {}
    deleted: list[UUID] = []
    woken: Woken = set()
    repeated = len(set(ids)) < len(ids)  # an id given twice must see its own earlier change
    for job_id in ids:
        before = current.get(job_id)
        change = decide(job_id, before)
        results.append(Modified(job_id, before, change, before.queue if before else None))
        if before is None:
            continue
        if isinstance(change, Update):
            pending.setdefault(job_id, {}).update(change.values)
            if change.values.get("state") is JobState.WAITING:
                woken.add(before.queue)
            if repeated:
                current[job_id] = apply(before, change)
        elif isinstance(change, Delete):
            deleted.append(job_id)
            pending.pop(job_id, None)
            current[job_id] = None
    _write_updates(cur, d, pending)
    _delete_rows(cur, d, [d.encode_id(i) for i in deleted])
    results, released = _apply_children(cur, d, results)
    return results, woken | released


def transition_jobs(conn: Connection, ids: Sequence[UUID], t: Transition) -> tuple[list[Modified], Woken]:
    """Apply a `Transition` with one ``UPDATE ... FROM (VALUES ...)`` per chunk: no row loads.

    Rows are keyed by their encoded id (a str on SQLite, whose hash is cached) on this path."""
    cur, d = cursor_of(conn)
    common = encode_values(t.values)
    extra = tuple(sorted(next(iter(t.per_id.values())))) if t.per_id else ()
    states = [s.value for s in t.from_states]
    keys = [d.encode_id(i) for i in ids]
    unique = dict(zip(keys, ids, strict=True))  # first occurrence of each id, in order
    if d.postgres:
        # UPDATE ... FROM locks rows in join order; take the locks in id order first, as
        # modify_jobs does, so concurrent batches and sweeps never deadlock on each other.
        _lock_in_order(cur, d, sorted(unique.values()))
    done: dict[Any, tuple[str, bool]] = {}
    parents: list[UUID] = []  # changed jobs with dependents (the only ones worth a release)
    parents_meta: dict[Any, tuple[Any, str | None]] = {}
    items = list(unique.items())
    for chunk in chunks(items, 1 + len(extra)):
        params: list[Any] = []
        for key, job_id in chunk:
            params.append(key)
            if extra:
                own = t.per_id.get(job_id, _NO_VALUES)
                for column in extra:  # a loop, not a comprehension: no function made per row
                    params.append(encode_value(column, own.get(column)))
        sql = _transition_sql(d, len(chunk), extra, tuple(common), len(states), t.worker_id is not None, t.delete_if)
        # placeholder order: WITH rows, SET, states, owner
        cur.execute(sql, [*params, *common.values(), *states, *([t.worker_id] if t.worker_id is not None else [])])
        for key, queue, delete, meta_text, flow_id, has_children in cur.fetchall():
            done[key] = (queue, bool(delete))
            if has_children:
                parents.append(unique[key])
            if t.follow_ups is not None and meta_text is not None and '"follow_ups"' in meta_text:
                parents_meta[key] = (json.loads(meta_text), flow_id)
    spawned = _spawn_follow_ups(conn, t, unique, parents_meta)
    _delete_rows(cur, d, [key for key, (_, delete) in done.items() if delete])
    accepted: list[bool] = []
    seen: set[Any] = set()
    for key in keys:  # an id given twice is accepted once, then refused as already changed
        accepted.append(key in done and key not in seen)
        seen.add(key)
    refused_ids = sorted({job_id for job_id, ok in zip(ids, accepted, strict=True) if not ok})
    refused = _select_for_update(cur, d, refused_ids) if refused_ids else {}
    results: list[Modified] = []
    updated, deleted = Update(t.values, t.children), Delete(t.children)  # shared by every row
    for key, job_id, ok in zip(keys, ids, accepted, strict=True):
        if ok:
            queue, delete = done[key]
            results.append(Modified(job_id, None, deleted if delete else updated, queue, spawned=spawned.get(key, ())))
        else:  # not in a from-state, missing, or the same id again (already transitioned)
            current = refused.get(job_id)
            results.append(
                Modified(job_id, current, Reject(t.refuse(job_id, current)), current.queue if current else None)
            )
    woken = {queue for queue, _ in done.values()} if t.values.get("state") is JobState.WAITING else set()
    woken |= {job.queue for jobs in spawned.values() for job in jobs}  # may be spurious: harmless
    if t.children.release and parents:
        woken |= _release_children(cur, d, sorted(parents), t.children.at_ms)
    if t.children.cascade_error:
        raise StorageError("a Transition cannot cascade: use a Decide for changes that kill jobs")
    return results, woken


@lru_cache(maxsize=512)
def _transition_sql(
    d: Dialect,
    rows: int,
    extra: tuple[str, ...],
    common: tuple[str, ...],
    states: int,
    owner: bool,
    delete_if: str | None,
) -> str:
    values = ", ".join([f"({d.placeholders(1 + len(extra))})"] * rows)
    sets = [f"{c} = ?" for c in common] + [f"{c} = v.{c}" for c in extra]
    flag = f"{TABLE}.{delete_if}" if delete_if else "NULL"
    return d.sql(
        f"WITH v(id{''.join(', ' + c for c in extra)}) AS (VALUES {values}) "
        f"UPDATE {TABLE} SET {', '.join(sets)} FROM v "
        f"WHERE {TABLE}.id = v.id AND {TABLE}.state IN ({d.placeholders(states)})"
        f"{f' AND {TABLE}.worker_id = ?' if owner else ''} "
        f"RETURNING {TABLE}.id, {TABLE}.queue, {flag}, {TABLE}.metadata, {TABLE}.flow_id, "
        f"EXISTS (SELECT 1 FROM {DEPS} WHERE {DEPS}.parent_id = {TABLE}.id)"
    )


def _spawn_follow_ups(
    conn: Connection, t: Transition, unique: dict[Any, UUID], parents_meta: dict[Any, tuple[Any, str | None]]
) -> dict[Any, tuple[Job, ...]]:
    """Insert the follow-up jobs of the rows just changed, in the same transaction, each in a
    savepoint of its own: one that cannot be queued goes to the DLQ instead of failing the ack."""
    spawned: dict[Any, tuple[Job, ...]] = {}
    if t.follow_ups is None:
        return spawned
    cur, d = cursor_of(conn)
    for key, (parent_meta, flow_id) in parents_meta.items():
        parent_id = unique[key]
        created = []
        for job, data_text, resolve in t.follow_ups(parent_id, parent_meta, flow_id, t.per_id.get(parent_id, {})):
            cur.execute("SAVEPOINT follow_up")
            try:
                insert_jobs(conn, [job], [data_text], resolve, check_paused=False)
            except ConveyorError as exc:
                cur.execute("ROLLBACK TO SAVEPOINT follow_up")
                dead = Job.trusted(
                    {
                        **job.__dict__,
                        "state": JobState.DLQ,
                        "unique_key": None,
                        "completed_at": job.created_at,
                        "last_error": f"follow-up of job {parent_id} could not be queued: {exc.message}"[:10_000],
                    }
                )
                insert_jobs(conn, [dead], [data_text], None, check_paused=False)
            cur.execute("RELEASE SAVEPOINT follow_up")
            created.append(job)
        spawned[key] = tuple(created)
    return spawned


def _write_updates(cur: Any, d: Dialect, pending: dict[UUID, dict[str, Any]]) -> None:
    """One executemany per distinct set of columns: a batch ack is one statement."""
    groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
    for job_id, values in pending.items():
        encoded = encode_values(values)
        columns = tuple(sorted(encoded))
        groups[columns].append((*(encoded[c] for c in columns), d.encode_id(job_id)))
    for columns, params in groups.items():
        sets = [f"{c} = ?" for c in columns]
        if "started_at" in columns:
            # a job put back unstarted (released) is again subject to its ttl_ms
            at = columns.index("started_at")
            sets.append(
                "expires_at = CASE WHEN ttl_ms IS NULL OR CAST(? AS BIGINT) IS NOT NULL THEN expires_at "
                "ELSE created_at + ttl_ms END"
            )
            params = [(*row[:-1], row[at], row[-1]) for row in params]
        sql = d.sql(f"UPDATE {TABLE} SET {', '.join(sets)} WHERE id = ?")
        if len(params) == 1:
            cur.execute(sql, params[0])
        else:
            cur.executemany(sql, params)


def get_job(conn: Connection, job_id: UUID) -> Job | None:
    cur, d = cursor_of(conn)
    cur.execute(d.sql(f"SELECT {COLUMN_LIST} FROM {TABLE} WHERE id = ?"), (d.encode_id(job_id),))
    row = cur.fetchone()
    return None if row is None else decode_job(row, d)


def list_jobs(conn: Connection, queue: str, state: str, limit: int, offset: int, newest_first: bool) -> list[Job]:
    cur, d = cursor_of(conn)
    direction = "DESC" if newest_first else "ASC"
    cur.execute(
        d.sql(
            f"SELECT {COLUMN_LIST} FROM {TABLE} WHERE queue = ? AND {_state_where(state)} "
            f"ORDER BY updated_at {direction}, id {direction} LIMIT ? OFFSET ?"
        ),
        (queue, limit, offset),
    )
    return [decode_job(row, d) for row in cur.fetchall()]


def _state_where(state: str) -> str:
    """``state = '<state>'`` with the value written out, and for a settled state the settled
    index's predicate too: SQLite uses a partial index only for a query whose terms repeat its
    predicate, and cannot see through a bound parameter."""
    literal = f"state = '{JobState(state).value}'"  # a JobState value: safe to write into SQL
    return f"{SETTLED_SQL} AND {literal}" if state not in _HOT_STATES else literal


_HOT_STATES = frozenset({JobState.WAITING.value, JobState.ACTIVE.value})
"""The states outside `SETTLED_SQL`, each with a partial index of its own (claim, heartbeat)."""


def list_flow(conn: Connection, flow_id: str, limit: int) -> list[Job]:
    cur, d = cursor_of(conn)
    cur.execute(
        d.sql(f"SELECT {COLUMN_LIST} FROM {TABLE} WHERE flow_id = ? ORDER BY created_at, id LIMIT ?"), (flow_id, limit)
    )
    return [decode_job(row, d) for row in cur.fetchall()]


def flow_counts(conn: Connection, flow_id: str) -> dict[str, int]:
    cur, d = cursor_of(conn)
    cur.execute(d.sql(f"SELECT state, COUNT(*) FROM {TABLE} WHERE flow_id = ? GROUP BY state"), (flow_id,))
    return {state: count for state, count in cur.fetchall()}


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
    cur, d = cursor_of(conn)

    def ids(where: str, cutoff: int) -> list[UUID]:
        cur.execute(d.sql(f"SELECT id FROM {TABLE} WHERE {where} LIMIT ?"), (cutoff, limit))
        return [d.decode_id(row[0]) for row in cur.fetchall()]

    # Each condition repeats its partial index's predicate verbatim, so only live rows are read.
    return {
        "stalled": ids(f"{ACTIVE_SQL} AND last_heartbeat < ?", stall_before_ms),
        "timed_out": ids(f"{DEADLINE_SQL} AND deadline_at <= ?", now_ms),
        "expired": ids(f"{EXPIRES_SQL} AND expires_at <= ?", now_ms),
    }


def list_queues(conn: Connection, queue: str | None) -> list[QueueRow]:
    cur, d = cursor_of(conn)
    params = () if queue is None else (queue,)
    cur.execute(d.sql("SELECT name, paused FROM conveyor_queues" + (" WHERE name = ?" if params else "")), params)
    found: dict[str, QueueRow] = {name: QueueRow(name, bool(paused)) for name, paused in cur.fetchall()}
    # one count per index: settled jobs by the settled index, waiting and active by their own
    only = " AND queue = ?" if params else ""
    counts = " UNION ALL ".join(
        f"SELECT queue, state, count(*) FROM {TABLE} WHERE {where}{only} GROUP BY queue, state"
        for where in (SETTLED_SQL, "state = 'waiting'", ACTIVE_SQL)
    )
    cur.execute(d.sql(counts), params * 3)
    for name, state, n in cur.fetchall():
        found.setdefault(name, QueueRow(name)).counts[state] = n
    return [found[name] for name in sorted(found)]


def set_paused(conn: Connection, queue: str, paused: bool, now_ms: int) -> Woken:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(queues).values(name=queue, paused=paused, updated_at=now_ms)
    conn.execute(
        stmt.on_conflict_do_update(index_elements=[queues.c.name], set_={"paused": paused, "updated_at": now_ms})
    )
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
        _rebuild_indexes(conn, int(found))
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))


_CHANGED_INDEXES_SINCE: dict[int, tuple[str, ...]] = {
    3: ("ix_conveyor_jobs_deadline", "ix_conveyor_jobs_expires"),  # narrower sweep predicates
    4: ("ix_conveyor_jobs_expires", "ux_conveyor_jobs_unique_key"),  # predicates without IN lists
    6: ("ix_conveyor_jobs_settled",),  # replaces ix_conveyor_jobs_queue_state
}
"""Schema version -> the indexes it redefined or added (tables added since version 1 are
created by ``create_all``)."""
_DROPPED_INDEXES_SINCE: dict[int, tuple[str, ...]] = {6: ("ix_conveyor_jobs_queue_state",)}
"""Schema version -> the indexes it removed."""


def _rebuild_indexes(conn: Connection, found: int) -> None:
    """Drop the indexes removed by every version after ``found`` and recreate those it
    redefined or added, as `tables` defines them now. A redefined unique index covers the same
    rows as before, so it cannot fail to build."""
    gone = {name for version, names in _DROPPED_INDEXES_SINCE.items() if version > found for name in names}
    for name in sorted(gone):
        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
    names = {name for version, names in _CHANGED_INDEXES_SINCE.items() if version > found for name in names}
    for index in jobs.indexes:
        if index.name in names:
            conn.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
            index.create(conn)
