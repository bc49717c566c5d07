"""Claims: waiting jobs of a queue moved to active, highest priority first, then oldest.

PostgreSQL claims in one statement (``SKIP LOCKED``, ``RETURNING``): several nodes claim at
once. On SQLite the group's write transaction holds the database's only write lock, so a claim
reads the rows, then updates them by rowid, and changes what it read as its UPDATE did
(`_claimed`): two statements, cheaper than ``UPDATE ... RETURNING``, which copies its rows into a
temporary table and gives them in no defined order. (A third reads back, in full, the claimed
jobs that are not usual, below.)

The driver's cost of reading a row is mostly per column (~0.1 µs each, measured), so the
protocols' claim (`claim_jobs_json`) reads the 10 columns of a usual job, not all 36: a job whose
optional fields are empty (`codec.USUAL_SQL`) is rendered from those (`codec.render_usual`); the
few others are read in full after the update. Measured in tests/benchmarks/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from conveyor.models import Job

from .codec import USUAL_COLUMNS, USUAL_SQL, decode_job, render_job, render_usual, usual_shared
from .dialect import CHUNK, COLUMN_LIST, COLUMNS, TABLE, Dialect, chunks, cursor_of

_WAITING = (
    f"FROM {TABLE} WHERE queue = ? AND state = 'waiting' "
    "AND NOT EXISTS (SELECT 1 FROM conveyor_queues WHERE name = ? AND paused = ?) "
    "ORDER BY priority DESC, order_key, id LIMIT ?"
)
_CLAIM = (
    f"UPDATE {TABLE} SET state = 'active', started_at = ?, last_heartbeat = ?, updated_at = ?, worker_id = ?, "
    "expires_at = NULL, deadline_at = CASE WHEN timeout_ms IS NULL THEN NULL ELSE timeout_ms + ? END "
)
_USUAL_READ = f"rowid, {USUAL_SQL}, {', '.join(USUAL_COLUMNS)}"


def claim_jobs(conn: Connection, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Job]:
    cur, d = cursor_of(conn)
    if d.postgres:
        return [decode_job(row, d) for row in _claim_postgres(cur, d, queue, count, now_ms, worker_id)]
    rows = _claim_sqlite(cur, d, f"rowid, {COLUMN_LIST}", queue, count, now_ms, worker_id)
    return [decode_job(_claimed(row, now_ms, worker_id), d) for row in rows]


def claim_jobs_json(conn: Connection, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[str]:
    cur, d = cursor_of(conn)
    if d.postgres:
        return [render_job(row, d) for row in _claim_postgres(cur, d, queue, count, now_ms, worker_id)]
    rows = _claim_sqlite(cur, d, _USUAL_READ, queue, count, now_ms, worker_id)
    others = _read_full(cur, d, [row[0] for row in rows if not row[1]])  # read after the update: as claimed
    shared = usual_shared(queue, "active", now_ms, now_ms, worker_id, now_ms)
    texts = []
    for rowid, usual, id_, name, data, progress, priority, created, tries, tried, backoff, delay in rows:
        if usual:
            texts.append(
                render_usual(d, id_, name, data, progress, priority, created, tries, tried, backoff, delay, shared)
            )
        else:
            texts.append(render_job(others[rowid], d))
    return texts


def _claim_postgres(cur: Any, d: Dialect, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Any]:
    # One statement, the pick a MATERIALIZED CTE: PostgreSQL would otherwise re-run an
    # IN-subquery with LIMIT ... SKIP LOCKED per row and claim more than ``count`` jobs.
    cur.execute(
        d.sql(
            f"WITH picked AS MATERIALIZED (SELECT id {_WAITING}{d.skip_locked}) {_CLAIM}"
            f"WHERE id IN (SELECT id FROM picked) AND state = 'waiting' RETURNING {COLUMN_LIST}"
        ),
        (queue, queue, True, count, now_ms, now_ms, now_ms, worker_id, now_ms),
    )
    return sorted(cur.fetchall(), key=_claim_order)  # RETURNING gives no defined order


def _claim_sqlite(
    cur: Any, d: Dialect, columns: str, queue: str, count: int, now_ms: int, worker_id: str | None
) -> list[Any]:
    """``columns`` (rowid first) of the waiting rows claimed, in claim order, as read before
    the update."""
    cur.execute(f"SELECT {columns} {_WAITING}", (queue, queue, True, count))
    picked = cur.fetchall()
    values = (now_ms, now_ms, now_ms, worker_id, now_ms)
    for part in chunks(picked):
        # The statement's text depends on the length of its IN list. A full claim's chunks
        # have lengths fixed by the count the worker asks for; a partial claim's are padded
        # to a power of two (at most CHUNK) with a rowid SQLite never gives (they start at
        # 1): a few texts in all, each prepared once and kept in the driver's cache.
        keys = [row[0] for row in part]
        if len(picked) < count:
            keys += [-1] * (min(1 << (len(keys) - 1).bit_length(), CHUNK) - len(keys))
        cur.execute(f"{_CLAIM}WHERE rowid IN ({d.placeholders(len(keys))})", (*values, *keys))
    return picked


def _read_full(cur: Any, d: Dialect, rowids: Sequence[int]) -> dict[int, Any]:
    """Whole rows (`COLUMNS` order) by rowid."""
    rows: dict[int, Any] = {}
    for part in chunks(rowids):
        cur.execute(f"SELECT rowid, {COLUMN_LIST} FROM {TABLE} WHERE rowid IN ({d.placeholders(len(part))})", part)
        rows.update((row[0], row[1:]) for row in cur.fetchall())
    return rows


_TIMEOUT_MS = COLUMNS.index("timeout_ms") + 1  # in a row read with its rowid first


def _claimed(row: Sequence[Any], now_ms: int, worker_id: str | None) -> tuple[Any, ...]:
    """A waiting row (rowid first) as the claim's UPDATE leaves it, in `COLUMNS` order (which
    `codec.EXPECTED_COLUMNS` pins): state, updated_at, started_at, worker_id, last_heartbeat,
    deadline_at and expires_at set."""
    timeout = row[_TIMEOUT_MS]
    deadline = None if timeout is None else timeout + now_ms
    return (*row[1:7], "active", *row[8:14], now_ms, now_ms, *row[16:33], worker_id, now_ms, deadline, None)


_PRIORITY, _ORDER_KEY = COLUMNS.index("priority"), COLUMNS.index("order_key")


def _claim_order(row: Sequence[Any]) -> tuple[int, int, Any]:
    # ids compare as the index orders them: UUIDs (by value) on PostgreSQL
    return (-row[_PRIORITY], row[_ORDER_KEY], row[0])
