"""SQLite backend: one writer thread with group commit.

Every primitive runs on one dedicated thread that owns the connection. Operations that queue
up while a transaction runs are executed together in the next one, each inside its own
SAVEPOINT (so one failing push does not undo its neighbours), and committed with one fsync.
Durability: WAL with ``synchronous=FULL`` -- when a call returns, its transaction is in the
WAL on disk and survives a power loss, not just a process crash. Several processes may share
one file; SQLite serializes their writers (``BEGIN IMMEDIATE`` with a busy timeout).
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_mod
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from conveyor.errors import ConveyorError, StorageError

from .base import Primitive, SqlStorage
from .primitives import ensure_schema

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_GROUP = 256
BUSY_TIMEOUT_MS = 30_000
CROSS_PROCESS_POLL_S = 0.2
"""SQLite cannot notify other processes: waiting pullers re-check at least this often."""


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


def _deliver(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, ConveyorError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, SQLAlchemyError):
        return StorageError(f"sqlite error: {getattr(exc, 'orig', exc)}")
    return exc


class SqliteStorage(SqlStorage):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        database = make_url(url).database
        self.path = database or ":memory:"
        self.memory = self.path == ":memory:"
        self._ops: queue_mod.SimpleQueue[Any] = queue_mod.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA cache_size = -65536")
        return conn

    async def open(self) -> None:
        engine = create_engine("sqlite://", creator=self._connect, poolclass=StaticPool)

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            # Take the write lock up front: no deadlock-prone lock upgrades between processes.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        self._engine = engine
        self._thread = threading.Thread(target=self._writer, name=f"conveyor-sqlite:{self.path}", daemon=True)
        self._thread.start()
        await self._run(_schema)

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._ops.put(_STOP)
        await anyio.to_thread.run_sync(thread.join)
        if self._engine is not None:
            self._engine.dispose()
        self.wakeups.wake_all()

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # Each sweep step is its own IMMEDIATE transaction, which SQLite already serializes
        # across processes; a second process repeating a step finds nothing left to do.
        yield True

    async def wait_for_jobs(self, queue: str, timeout_s: float) -> None:
        await super().wait_for_jobs(queue, min(timeout_s, CROSS_PROCESS_POLL_S))

    # -- execution ---------------------------------------------------------------------------

    async def _run(self, fn: Primitive[T], *args: Any) -> T:
        if self._thread is None:
            raise StorageError(f"storage {self.url} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._ops.put(_Op(fn, args, future, loop))
        result, woken = await future
        if woken:
            self.wakeups.wake(woken)
        return result

    def _writer(self) -> None:
        assert self._engine is not None
        with self._engine.connect() as conn:
            stopping = False
            while not stopping:
                item = self._ops.get()
                if item is _STOP:
                    break
                batch = [item]
                while len(batch) < MAX_GROUP:
                    try:
                        item = self._ops.get_nowait()
                    except queue_mod.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    batch.append(item)
                self._commit_group(conn, batch)

    def _commit_group(self, conn: Connection, batch: list[_Op]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with conn.begin():
                if len(batch) == 1:
                    op = batch[0]
                    outcomes.append((True, op.fn(conn, *op.args)))
                else:
                    for op in batch:
                        savepoint = conn.begin_nested()
                        try:
                            outcomes.append((True, op.fn(conn, *op.args)))
                            savepoint.commit()
                        except Exception as exc:  # noqa: BLE001 - reported to that caller
                            savepoint.rollback()
                            outcomes.append((False, _translate(exc)))
        except Exception as exc:  # noqa: BLE001 - the whole group failed to commit
            error = _translate(exc)
            if len(batch) > 1 and not isinstance(error, ConveyorError):
                log.error("sqlite group commit failed: %s", exc)
            outcomes = [(False, error)] * len(batch)
        for op, (ok, value) in zip(batch, outcomes, strict=True):
            op.loop.call_soon_threadsafe(_deliver, op.future, ok, value)


def _schema(conn: Connection) -> tuple[None, set[str]]:
    ensure_schema(conn)
    return None, set()
