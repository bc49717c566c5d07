"""SQLite backend: group commit on the event loop.

SQLite allows one writer at a time, and a commit costs an fsync, so calls are not run one by one:
they go through `grouping.GroupQueue` with one flusher, and each group is one transaction (a
failing call is undone alone, see `grouping`).

The flush runs on the loop thread itself. Running whole groups on a second thread costs a thread
hop (~100 µs here) per call and a GIL hand-over per group, which measured slower
(tests/benchmarks/RESULTS.md).

Durability: WAL, and with ``sqlite_synchronous=FULL`` (the default) a call is answered only once
its transaction is in the WAL on disk: it survives a power loss, not just a process crash. The
fsync is not done in the COMMIT: the connection runs at ``NORMAL``, and `wal_sync.WalSyncer`'s
helper process syncs the WAL after each group that wrote, while the loop serves connections
(the same guarantee as SQLite's own ``FULL``; see `wal_sync`). A group that only claimed jobs
(``flush=False``, see `grouping.Op`) asks for no fsync, as losing a claim only delivers its
jobs again (it runs after the group before it is on disk, so it never hands out a job whose push
the disk may yet lose). Where the WAL cannot be used (an in-memory database) or the helper does
not start, the COMMIT itself syncs (``FULL``, on the loop). ``NORMAL`` (the setting) skips the fsync: still safe
against a crash of the process, but the last commits may be lost if the machine loses power.

Several processes may share one file; SQLite serializes their writers (``BEGIN IMMEDIATE``);
while another process holds the write lock, the flusher waits asynchronously, so this process's
loop keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from conveyor.errors import ConveyorError, StorageError, ValidationError

from .base import Primitive, SqlStorage
from .grouping import Committed, GroupQueue, Op, needs_flush, run_group
from .primitives import ensure_schema
from .wal_sync import WalSyncer

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


def _database_path(url: str) -> str:
    """The file a ``sqlite:`` URL names; ``sqlite://`` (no path) is an in-memory database. A
    host part is refused rather than ignored: ``sqlite://jobs.db`` reads ``jobs.db`` as a host
    and names no file, and silently running in memory would lose every job."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValidationError(
            f"storage URL {url!r} cannot be parsed ({exc}): use sqlite:///path/to/file.db", field="storage"
        ) from None
    if parsed.host or parsed.port or parsed.username or parsed.password:
        raise ValidationError(
            f"storage URL {url!r} has a host part, which SQLite has no use for: a file takes three slashes "
            "(sqlite:///jobs.db), an absolute path four (sqlite:////var/lib/jobs.db)",
            field="storage",
        )
    return parsed.database or ":memory:"


class SqliteStorage(SqlStorage):
    def __init__(self, url: str, *, synchronous: str = "FULL") -> None:
        super().__init__(url)
        if synchronous not in ("FULL", "NORMAL"):
            raise StorageError(f"sqlite synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.synchronous = synchronous
        self.path = _database_path(url)
        self.memory = self.path == ":memory:"
        self._groups = GroupQueue(self._commit_group, max_group=MAX_GROUP)
        self._conn: Connection | None = None
        self._closing = False
        self._syncer: WalSyncer | None = None
        """Makes commits durable when ``synchronous`` is FULL and the database is in WAL mode."""

    # -- lifecycle ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Opening may meet another process creating the same file: wait for it as long as a
        # writer would. Afterwards lock waits happen in `_begin`, with the loop free.
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
        wal = not self.memory and conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
        if wal and self.synchronous == "FULL" and self._syncer is None:  # the syncer's fsync, after each COMMIT
            # SQLite puts the WAL beside the file a symlink points to
            self._syncer = WalSyncer(Path(os.path.realpath(self.path) + "-wal"))
            conn.execute("PRAGMA synchronous = NORMAL")
        else:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA cache_size = -65536")
        conn.execute(f"PRAGMA busy_timeout = {LOCK_POLL_MS}")
        return conn

    async def open(self) -> None:
        engine = create_engine("sqlite://", creator=self._connect, poolclass=StaticPool)
        try:
            self._conn = engine.connect()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open {self.url}: {getattr(exc, 'orig', exc)}") from None
        try:
            if self._syncer is not None and not await self._syncer.start():
                self._sync_in_commit()
            await self._run(_schema)
        except BaseException:
            await self.close()
            raise

    def _sync_in_commit(self) -> None:
        """Without a helper, each COMMIT makes its own fsync (SQLite's ``FULL``)."""
        assert self._conn is not None
        log.warning("%s: the WAL sync helper cannot run; each COMMIT syncs instead (synchronous=FULL)", self.path)
        self._syncer = None
        raw: Any = self._conn.connection.driver_connection
        raw.execute("PRAGMA synchronous = FULL")

    async def close(self) -> None:
        """Finish every call already queued, refuse new ones, then close. Safe to call twice."""
        self._closing = True
        await self._groups.drain()  # pending calls finish; nothing is dropped
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._syncer is not None:
            await self._syncer.close()
        engine = conn.engine
        conn.close()
        engine.dispose()
        self.wakeups.wake_all()

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        # Each sweep step is its own IMMEDIATE transaction, which SQLite already serializes
        # across processes; a second process repeating a step finds nothing left to do.
        yield True

    async def wait_for_jobs(self, queue: str, timeout_s: float) -> None:
        await super().wait_for_jobs(queue, min(timeout_s, CROSS_PROCESS_POLL_S))

    # -- execution ---------------------------------------------------------------------------

    async def _run(
        self, fn: Primitive[T], *args: Any, read_only: bool = False, flush: bool = True,
        orphaned: Callable[[Any], None] | None = None,
    ) -> T:  # fmt: skip
        if self._conn is None or self._closing:
            raise StorageError(f"storage {self.url} is closed")
        result, woken = await self._groups.call(fn, args, read_only, flush, orphaned)
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

    async def _commit_group(self, group: list[Op]) -> Committed:
        """Run ``group`` in one transaction, each op in its own savepoint; None for an op whose
        caller was cancelled before it ran (it is skipped, so a cancelled pull claims nothing).
        With it, what to await before the callers hear the outcomes: the fsync of this commit,
        when the group wrote something that must be durable (the group before has been synced:
        the flusher waited for it).

        Transactions and savepoints go straight to the driver: through SQLAlchemy they cost
        ~100 µs each, more than an insert. SQLAlchemy's own idea of the transaction is reset
        afterwards; its begin and rollback are no-ops on this autocommit-mode connection."""
        conn = self._conn
        assert conn is not None  # close() drains the groups before closing
        raw: Any = conn.connection.driver_connection
        syncer = self._syncer
        if syncer is not None:
            # Nothing runs before the commits already made are on disk (a flusher cancelled
            # while it waited leaves one behind): no claim hands out a job that may be lost.
            await syncer.settled()
            if needs_flush(group):
                if syncer.failed is not None:  # refused before it runs: nothing of it is stored
                    return [None if op.future.done() else (False, StorageError(syncer.failed)) for op in group], None
                if not await syncer.start():  # it died and cannot be started again
                    self._sync_in_commit()

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

        try:
            await self._begin(raw, read_only=all(op.read_only for op in group))
            try:
                outcomes = run_group(group, run, savepoint, _translate, isolated=False)
                if outcomes is None:  # an op failed: undo the group, rerun each op in a savepoint
                    raw.execute("ROLLBACK")
                    await self._begin(raw, read_only=False)
                    outcomes = run_group(group, run, savepoint, _translate, isolated=True)
                raw.execute("COMMIT")
            finally:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                if conn.in_transaction():
                    conn.rollback()
        except Exception as exc:  # noqa: BLE001 - the whole group failed
            error = _translate(exc)
            if len(group) > 1 and not isinstance(error, ConveyorError):
                log.error("sqlite group commit failed: %s", exc)
            return [(False, error)] * len(group), None
        assert outcomes is not None
        if self._syncer is None:
            return outcomes, None
        return outcomes, self._syncer.request() if needs_flush(group) else None


def _schema(conn: Connection) -> tuple[None, set[str]]:
    ensure_schema(conn)
    return None, set()
