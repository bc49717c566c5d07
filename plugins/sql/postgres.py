"""PostgreSQL backend: the multi-node mode.

Primitives run through SQLAlchemy's async engine (psycopg 3) with ``run_sync``, so their SQL is
the same code SQLite runs. Calls that arrive together share a transaction (`grouping`), with up
to half the pool's connections committing groups side by side. Claims use ``FOR UPDATE SKIP LOCKED``; queues that gain waiting jobs
are announced with ``pg_notify`` inside the same transaction (delivered on commit), and one
LISTEN connection per node wakes its waiting pullers. ``?schema=NAME`` in the URL keeps all
tables in that schema (created if missing), which is how tests share one database.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor.errors import ConveyorError, StorageError, StorageUnavailableError, ValidationError

from .base import Primitive, SqlStorage
from .event_log import EVENTS_KEY, PostgresEventLog
from .grouping import Committed, GroupQueue, Op, Outcome, commits_lazily, run_group
from .primitives import ensure_schema

T = TypeVar("T")
log = logging.getLogger(__name__)

CHANNEL = "conveyor_jobs"
EVENTS_CHANNEL = "conveyor_events"
PAYLOAD_SEPARATOR = "/"
"""Notifications carry ``schema/queue``: deployments in different schemas of one database
share the channel but not each other's wake-ups."""
RETRIES = 5
MAX_GROUP = 256
FLUSHERS = 2
"""Groups committing at once: while one waits for its WAL flush the next one runs. With 16
clients pushing, 2 measured 728 pushes/s against 532 with 1 and 597 with 5 (RESULTS.md)."""
RETRYABLE = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
SAFETY_POLL_S = 2.0
"""Waiting pullers re-check at least this often, in case a notification was missed."""
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
"""Lower case only: search_path folds unquoted names to lower case."""


def _lock_key(name: str, schema: str | None) -> int:
    return zlib.crc32(f"conveyor:{schema or ''}:{name}".encode())


class PostgresStorage(SqlStorage):
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        super().__init__(url)
        parsed = make_url(url)
        schema = parsed.query.get("schema")
        self.schema: str | None = schema[-1] if isinstance(schema, tuple) else schema
        if self.schema is not None and not _SCHEMA_NAME.fullmatch(self.schema):
            raise ValidationError(
                f"schema {self.schema!r} in the storage URL must be a lower-case identifier", field="storage"
            )
        base = parsed.difference_update_query(["schema"])
        self._sa_url = base.set(drivername="postgresql+psycopg")
        self._conninfo = base.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._listener: asyncio.Task[None] | None = None
        self._groups = GroupQueue(self._commit_group, max_group=MAX_GROUP, flushers=FLUSHERS)
        self.event_log = PostgresEventLog(
            lambda: self._engine,
            self.wakeups,
            _lock_key("events", self.schema),
            lambda: (EVENTS_CHANNEL, self._channel_payload("")),
        )

    async def open(self) -> None:
        connect_args: dict[str, Any] = {}
        if self.schema:
            connect_args["options"] = f"-csearch_path={self.schema}"
        # operators (and tests) tell this storage's connections apart in pg_stat_activity
        connect_args["application_name"] = f"conveyor {self.schema or ''}".rstrip()[:63]
        self._engine = create_async_engine(
            self._sa_url,
            pool_size=self._pool_size,
            max_overflow=self._pool_size,
            connect_args=connect_args,
            pool_pre_ping=False,
        )
        connected = False
        try:
            async with self._engine.begin() as conn:
                connected = True
                # Nodes starting together must not race to create the same tables.
                await conn.execute(select(func.pg_advisory_xact_lock(_lock_key("schema", self.schema))))
                if self.schema:
                    await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                await conn.run_sync(ensure_schema)
        except SQLAlchemyError as exc:
            await self._engine.dispose()
            self._engine = None
            error = StorageError if connected else StorageUnavailableError
            raise error(f"cannot open {self._safe_url()}: {getattr(exc, 'orig', exc)}") from None
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ready), name="conveyor-pg-listen")
        with suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=5)

    async def close(self) -> None:
        await self._groups.drain()  # calls already queued finish; nothing is dropped
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await listener
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()
        self.wakeups.wake_all()

    def _safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    async def _run(
        self, fn: Primitive[T], *args: Any, read_only: bool = False, flush: bool = True,
        orphaned: Callable[[Any], None] | None = None,
    ) -> T:  # fmt: skip
        if self._engine is None:
            raise StorageError(f"storage {self._safe_url()} is closed")
        result, woken = await self._groups.call(fn, args, read_only, flush, orphaned)
        if woken:
            self.wakeups.wake(woken)  # this node's pullers need not wait for the round trip
        return result

    async def _commit_group(self, group: list[Op]) -> Committed:
        """The group's transaction; its COMMIT returns once the WAL is flushed, so the callers
        are answered at once (nothing more to wait for)."""
        return await self._transaction(group), None

    async def _transaction(self, group: list[Op]) -> list[Outcome]:
        """One transaction for the group (see `grouping`); deadlocks and serialization
        failures roll it back whole and run it again."""
        engine = self._engine
        if engine is None:
            error = StorageError(f"storage {self._safe_url()} is closed")
            return [None if op.future.done() else (False, error) for op in group]
        isolated, attempt = False, 1
        while True:
            try:
                async with engine.begin() as conn:
                    try:
                        outcomes: list[Outcome] = await conn.run_sync(
                            _run_group, group, isolated, self._channel_payload
                        )
                    except (SQLAlchemyError, psycopg.Error) as exc:
                        if not _disconnected(exc):
                            raise
                        await conn.invalidate()  # not back into the pool
                        raise _Reconnect from exc
                return outcomes
            except _Rerun:
                isolated = True
            except ConveyorError as exc:  # the group's only live call refused its input
                return [None if op.future.done() else (False, exc) for op in group]
            except (_Reconnect, SQLAlchemyError, psycopg.Error) as exc:
                # A deadlock or serialization failure rolled the transaction back whole; a
                # connection that died (a killed backend, a restart, a stale pooled one) did so
                # before COMMIT was sent. Either way nothing was committed, and primitives are
                # pure functions of the rows: running the group again is safe.
                if (isinstance(exc, _Reconnect) or _retryable(exc)) and attempt < RETRIES:
                    await asyncio.sleep(0.005 * attempt)
                    attempt += 1
                    continue
                error = _translate(exc.__cause__ if isinstance(exc, _Reconnect) and exc.__cause__ else exc)
                return [None if op.future.done() else (False, error) for op in group]

    def _channel_payload(self, queue: str) -> str:
        return f"{self.schema or ''}{PAYLOAD_SEPARATOR}{queue}"

    async def wait_for_jobs(self, queue: str, timeout_s: float) -> None:
        await super().wait_for_jobs(queue, min(timeout_s, SAFETY_POLL_S))

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        if self._engine is None:
            raise StorageError("storage is closed")
        key = _lock_key(name, self.schema)
        async with self._engine.connect() as conn:
            held = bool(await conn.scalar(select(func.pg_try_advisory_lock(key))))
            await conn.commit()
            try:
                yield held
            finally:
                if held:
                    await conn.scalar(select(func.pg_advisory_unlock(key)))
                    await conn.commit()

    async def _listen(self, ready: asyncio.Event) -> None:
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    ready.set()
                    delay = 0.1
                    self.wakeups.wake_all()  # anything pushed while we were not listening
                    mine = self._channel_payload("")
                    async for note in conn.notifies():
                        if note.channel == EVENTS_CHANNEL:
                            if note.payload == mine:
                                self.wakeups.wake({EVENTS_KEY})
                        elif note.payload.startswith(mine):
                            self.wakeups.wake({note.payload[len(mine) :]})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening; pullers poll meanwhile
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _Rerun(Exception):
    """A call failed in an optimistic group: roll back and run the group isolated."""


class _Reconnect(Exception):
    """The group's connection died before its COMMIT: run the group again on another."""


DISCONNECTED = frozenset({"57P01", "57P02", "57P03", "08000", "08003", "08006"})
"""Admin shutdown, crash shutdown, cannot connect now, and the connection exceptions."""


def _disconnected(exc: BaseException) -> bool:
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", exc)
    if not isinstance(orig, psycopg.OperationalError):
        return False
    return orig.sqlstate in DISCONNECTED or (orig.sqlstate is None and "connection" in str(orig).lower())


def _retryable(exc: BaseException) -> bool:
    return getattr(getattr(exc, "orig", exc), "sqlstate", None) in RETRYABLE


def _run_again(exc: BaseException) -> bool:
    """Whether a call's error is the group's (run it all again), not the call's own."""
    return _retryable(exc) or _disconnected(exc)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, ConveyorError) or not isinstance(exc, (SQLAlchemyError, psycopg.Error)):
        return exc
    return StorageError(f"postgresql error: {getattr(exc, 'orig', exc)}".strip())


def _run_group(conn: Connection, group: list[Op], isolated: bool, payload: Callable[[str], str]) -> list[Outcome]:
    """The group inside the caller's transaction, then one NOTIFY per queue it woke (delivered
    on commit)."""

    @contextmanager
    def savepoint() -> Iterator[None]:
        with conn.begin_nested():
            yield

    def run(op: Op) -> Any:
        return op.fn(conn, *op.args)

    if commits_lazily(group):
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")  # no wait for the WAL flush
    outcomes = run_group(group, run, savepoint, _translate, isolated=isolated, must_raise=_run_again)
    if outcomes is None:
        raise _Rerun
    woken = {queue for outcome in outcomes if outcome and outcome[0] for queue in outcome[1][1]}
    if woken:
        cursor = conn.connection.cursor()
        for queue in sorted(woken):
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(queue)))
    return outcomes
