"""SQLite backend: group commit on the event loop.

SQLite allows one writer at a time, and a commit costs an fsync, so calls are not run one by one:
they go through `grouping.GroupQueue` with one flusher, and each group is one transaction and
one fsync (a failing call is undone alone, see `grouping`).

The flush runs on the loop thread itself. Running whole groups on a second thread costs a thread
hop (~100 µs here) per call and a GIL hand-over per group, which measured slower
(tests/benchmarks/RESULTS.md). Only the COMMIT of a group that several callers share moves to a
thread, so the loop keeps serving while the disk syncs (see `SqliteStorage._commit`).

Durability: WAL with ``synchronous=FULL`` (the default) -- when a call returns, its transaction
is in the WAL on disk and survives a power loss, not just a process crash. Claims are the
exception (``flush=False``, see `grouping.Op`): a group of only claims commits at ``NORMAL``,
as losing one only delivers its jobs again; the next flushed commit makes it durable too.
``NORMAL`` (setting ``sqlite_synchronous``) skips the per-commit fsync: still safe against a crash of the process,
but the last commits may be lost if the machine loses power. Several processes may share one
file; SQLite serializes their writers (``BEGIN IMMEDIATE``); while another process holds the
write lock, the flusher waits asynchronously, so this process's loop keeps running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from conveyor.errors import ConveyorError, StorageError

from .base import Primitive, SqlStorage
from .grouping import GroupQueue, Op, Outcome, commits_lazily, needs_flush, run_group
from .primitives import ensure_schema

T = TypeVar("T")
"""(ok, value or error) for an op that ran; None for one whose caller left before it ran."""
log = logging.getLogger(__name__)

MAX_GROUP = 512
LOCK_POLL_MS = 5
"""SQLite's own busy wait per attempt; the loop is blocked only this long at a time."""
LOCK_WAIT_S = 30.0
"""How long a writer waits for another process's write lock before failing the calls."""
CROSS_PROCESS_POLL_S = 0.2
"""SQLite cannot notify other processes: waiting pullers re-check at least this often."""


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, ConveyorError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, (SQLAlchemyError, sqlite3.Error)):
        return StorageError(f"sqlite error: {getattr(exc, 'orig', exc)}")
    return exc


class SqliteStorage(SqlStorage):
    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        super().__init__(url)
        if synchronous not in ("FULL", "NORMAL"):
            raise StorageError(f"sqlite synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        database = make_url(url).database
        self.path = database or ":memory:"
        self.memory = self.path == ":memory:"
        self._groups = GroupQueue(self._commit_group, max_group=MAX_GROUP)
        self._conn: Connection | None = None
        self._closing = False
        self._committer: ThreadPoolExecutor | None = None
        """Runs the COMMIT (the fsync) of groups that several callers share; see `_commit`."""

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Opening may meet another process creating the same file: wait for it as long as a
        # writer would. Afterwards lock waits happen in `_begin`, with the loop free.
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
        if not self.memory:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute(f"PRAGMA busy_timeout = {LOCK_POLL_MS}")
        return conn

    async def open(self) -> None:
        if not self.memory and self.synchronous == "FULL":
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="conveyor-sqlite-commit")
        engine = create_engine("sqlite://", creator=self._connect, poolclass=StaticPool)
        try:
            self._conn = engine.connect()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open {self.url}: {getattr(exc, 'orig', exc)}") from None
        try:
            await self._run(_schema)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Finish every call already queued, refuse new ones, then close. Safe to call twice."""
        self._closing = True
        await self._groups.drain()  # pending calls finish; nothing is dropped
        conn, self._conn = self._conn, None
        if conn is None:
            return
        engine = conn.engine
        conn.close()
        engine.dispose()
        if self._committer is not None:
            self._committer.shutdown()
        self.wakeups.wake_all()

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # Each sweep step is its own IMMEDIATE transaction, which SQLite already serializes
        # across processes; a second process repeating a step finds nothing left to do.
        yield True

    async def wait_for_jobs(self, queue: str, timeout_s: float) -> None:
        await super().wait_for_jobs(queue, min(timeout_s, CROSS_PROCESS_POLL_S))

    # -- execution ---------------------------------------------------------------------------

    async def _run(self, fn: Primitive[T], *args: Any, read_only: bool = False, flush: bool = True) -> T:
        if self._conn is None or self._closing:
            raise StorageError(f"storage {self.url} is closed")
        result, woken = await self._groups.call(fn, args, read_only, flush)
        if woken:
            self.wakeups.wake(woken)
        return result

    async def _begin(self, raw: sqlite3.Connection, read_only: bool) -> None:
        """Start the group's transaction. Writers take the lock up front (IMMEDIATE: no lock
        upgrade that could deadlock between processes); while another process holds it, wait
        here with the loop free, not inside SQLite's busy handler."""
        if read_only:
            raw.execute("BEGIN")  # WAL readers never wait for writers
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        delay = 0.001
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if loop.time() >= deadline:
                    raise StorageError(
                        f"{self.path} stayed locked by another process for {LOCK_WAIT_S:.0f} s"
                    ) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _commit_group(self, group: list[Op]) -> list[Outcome]:
        """Run ``group`` in one transaction, each op in its own savepoint; None for an op whose
        caller was cancelled before it ran (it is skipped, so a cancelled pull claims nothing).

        Transactions and savepoints go straight to the driver: through SQLAlchemy they cost
        ~100 µs each, more than an insert. SQLAlchemy's own idea of the transaction is reset
        afterwards; its begin and rollback are no-ops on this autocommit-mode connection."""
        conn = self._conn
        assert conn is not None  # close() drains the groups before closing
        raw: Any = conn.connection.driver_connection

        @contextmanager
        def savepoint() -> Iterator[None]:
            raw.execute("SAVEPOINT op")
            try:
                yield
            except BaseException:
                raw.execute("ROLLBACK TO op")
                raise
            finally:
                raw.execute("RELEASE op")

        def run(op: Op) -> Any:
            return op.fn(conn, *op.args)

        lazy = self.synchronous == "FULL" and commits_lazily(group)
        try:
            if lazy:  # this commit may skip the fsync; the next flushed one covers it
                raw.execute("PRAGMA synchronous = NORMAL")
            await self._begin(raw, read_only=all(op.read_only for op in group))
            try:
                outcomes = run_group(group, run, savepoint, _translate, isolated=False)
                if outcomes is None:  # an op failed: undo the group, rerun each op in a savepoint
                    raw.execute("ROLLBACK")
                    await self._begin(raw, read_only=False)
                    outcomes = run_group(group, run, savepoint, _translate, isolated=True)
                await self._commit(raw, group)
            finally:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                if conn.in_transaction():
                    conn.rollback()
        except Exception as exc:  # noqa: BLE001 - the whole group failed
            error = _translate(exc)
            if len(group) > 1 and not isinstance(error, ConveyorError):
                log.error("sqlite group commit failed: %s", exc)
            return [(False, error)] * len(group)
        finally:
            if lazy:
                raw.execute(f"PRAGMA synchronous = {self.synchronous}")
        assert outcomes is not None
        return outcomes

    async def _commit(self, raw: sqlite3.Connection, group: list[Op]) -> None:
        """COMMIT, on the committer thread when several callers share the group: while the
        fsync runs, the loop parses their next requests and answers finished ones (measured:
        +60% for 16 HTTP clients pushing batches). A lone caller commits on the loop, as the
        thread hop would only add to its wait. The transaction must end before the connection is
        touched again, whatever happens to the flusher: the wait is shielded from anyio
        cancellation, and a plain task cancel (which passes the shield) waits for the COMMIT,
        lets the callers hear its outcome, then takes effect at the flusher's next await."""
        if self._committer is None or len(group) == 1 or not needs_flush(group):
            raw.execute("COMMIT")
            return
        running = self._committer.submit(raw.execute, "COMMIT")
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.wrap_future(running)
        except asyncio.CancelledError:  # a plain task cancel (loop teardown) passes the shield
            concurrent.futures.wait([running])  # the connection is not touched mid-COMMIT
            if running.exception() is not None:
                raise
            # Committed: the callers hear so, and the task is cancelled again at its next await
            # (or as it ends), so the cancellation is not lost.
            if (task := asyncio.current_task()) is not None:
                task.cancel()


def _schema(conn: Connection) -> tuple[None, set[str]]:
    ensure_schema(conn)
    return None, set()
