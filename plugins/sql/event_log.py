"""The shared event log on PostgreSQL: how events raised on one node reach the others.

Appends take a transaction-scoped advisory lock before drawing sequence numbers, so numbers
are handed out in commit order and a reader moving forward can never skip an event that
commits late. Each append sends one NOTIFY; every node's LISTEN connection wakes its readers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.errors import StorageError
from conveyor.storage import EventLog, LoggedEvent

from .base import Wakeups
from .tables import event_consumers, events

EVENTS_KEY = "\x00events"
"""The `Wakeups` key for appended events: no queue name can contain NUL."""


_APPEND = (
    f"WITH appended AS (INSERT INTO {events.name} (payload, created_at) "
    "SELECT p.event::text, %(now)s FROM (SELECT pg_advisory_xact_lock(%(key)s)) AS locked, "
    "json_array_elements(%(events)s::json) WITH ORDINALITY AS p(event, n) ORDER BY p.n RETURNING seq) "
    "SELECT pg_notify(%(channel)s, %(note)s)"
)
"""One statement and one parameter: the batch as one JSON array, split by PostgreSQL (``json``
keeps each element's text as sent). The lock is taken before the first row is made, so before
any sequence number is drawn; rows get their numbers in batch order; the NOTIFY goes out on
commit."""


class PostgresEventLog(EventLog):
    def __init__(
        self,
        engine: Callable[[], AsyncEngine | None],
        wakeups: Wakeups,
        lock_key: int,
        notify: Callable[[], tuple[str, str]],
    ) -> None:
        self._engine = engine
        self._wakeups = wakeups
        self._lock_key = lock_key
        self._notify = notify

    def _open_engine(self) -> AsyncEngine:
        engine = self._engine()
        if engine is None:
            raise StorageError("storage is closed")
        return engine

    async def append(self, batch: Sequence[dict[str, Any]], now_ms: int) -> None:
        if not batch:
            return
        channel, note = self._notify()
        params = {"key": self._lock_key, "events": json.dumps(batch), "now": now_ms, "channel": channel, "note": note}
        async with self._open_engine().connect() as conn:
            await conn.exec_driver_sql(_APPEND, params)
            await conn.commit()

    async def last_seq(self) -> int:
        async with self._open_engine().connect() as conn:
            return int(await conn.scalar(select(func.coalesce(func.max(events.c.seq), 0))) or 0)

    async def read(self, after: int, limit: int) -> list[LoggedEvent]:
        async with self._open_engine().connect() as conn:
            rows = await conn.execute(
                select(events.c.seq, events.c.payload).where(events.c.seq > after).order_by(events.c.seq).limit(limit)
            )
            return [(seq, json.loads(payload)) for seq, payload in rows]

    async def claim(self, consumer: str, limit: int) -> list[LoggedEvent]:
        async with self._open_engine().connect() as conn:
            start = select(func.coalesce(func.max(events.c.seq), 0)).scalar_subquery()
            await conn.execute(
                pg_insert(event_consumers)
                .values(name=consumer, seq=start)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            await conn.commit()
            cursor = await conn.scalar(
                select(event_consumers.c.seq)
                .where(event_consumers.c.name == consumer)
                .with_for_update(skip_locked=True)
            )
            if cursor is None:  # another node is claiming right now
                await conn.rollback()
                return []
            rows = await conn.execute(
                select(events.c.seq, events.c.payload).where(events.c.seq > cursor).order_by(events.c.seq).limit(limit)
            )
            batch = [(seq, json.loads(payload)) for seq, payload in rows]
            if batch:
                await conn.execute(
                    update(event_consumers).where(event_consumers.c.name == consumer).values(seq=batch[-1][0])
                )
            await conn.commit()
            return batch

    async def wait(self, timeout_s: float) -> None:
        await self._wakeups.wait(EVENTS_KEY, timeout_s)

    async def prune(self, before_ms: int) -> int:
        async with self._open_engine().begin() as conn:
            result = await conn.execute(delete(events).where(events.c.created_at < before_ms))
            return int(result.rowcount or 0)


__all__ = ["EVENTS_KEY", "PostgresEventLog"]
