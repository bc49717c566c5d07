"""Group commit, shared by the SQL backends: calls that arrive together share one transaction.

A call queues its primitive and awaits. A flusher task starts after every task that is ready
right now has had its turn, takes everything queued (up to ``max_group``) and runs it in one
transaction with one commit, which is what a durable commit costs: an fsync on SQLite, a WAL
flush on PostgreSQL. Sixteen clients pushing at once cost one commit, not sixteen. A backend may
hand back, with a group's outcomes, a future that completes when its commit is on disk (SQLite's
`wal_sync`): the callers are answered then, and the next group waits for it too, so the calls
that arrive meanwhile share one transaction and one fsync (running it at once cost more work per
job: the groups stay small, each with its own commit; tests/benchmarks/RESULTS.md).

Each call's primitive runs first without a savepoint (two statements per call saved). If one
fails, the backend rolls the group back and runs it again with each call in its own savepoint
(`run_group` with ``isolated=True``), so the failing call alone is refused and none of its
writes survive. Primitives only read and write the database, so running them again is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from conveyor.errors import StorageError

Outcome = tuple[bool, Any] | None
"""Per call: (True, result), (False, exception), or None when its caller gave up before it ran."""
Committed = tuple[list[Outcome], "asyncio.Future[None] | None"]
"""A group's outcomes, and what to await before its callers hear them (None: nothing)."""


@dataclass(slots=True)
class Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    read_only: bool
    flush: bool = True
    """False for a change whose loss in a power failure breaks no promise (a claim: its job
    is delivered again, as when a worker dies): it need not wait for the disk."""
    orphaned: Callable[[Any], None] | None = None
    """Called with the result of a call that ran but whose caller gave up before hearing it
    (cancelled while the group committed): a claim gives its jobs back."""


def needs_flush(group: list[Op]) -> bool:
    """Whether the group's commit must reach the disk before its callers hear of it."""
    return any(op.flush and not op.read_only for op in group)


def commits_lazily(group: list[Op]) -> bool:
    """Whether the group writes, but only changes that need no flush (claims): its commit may
    return before the disk has it."""
    return not needs_flush(group) and not all(op.read_only for op in group)


class GroupQueue:
    """Queues calls and hands them to ``commit`` in groups, with up to ``flushers`` groups in
    flight (1 for SQLite's single writer; more for PostgreSQL, whose transactions run side by
    side)."""

    def __init__(
        self, commit: Callable[[list[Op]], Awaitable[Committed]], *, max_group: int, flushers: int = 1
    ) -> None:
        self._commit = commit
        self.max_group = max_group
        self.max_flushers = flushers
        self._pending: list[Op] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], read_only: bool, flush: bool = True,
        orphaned: Callable[[Any], None] | None = None,
    ) -> Any:  # fmt: skip
        return await self.submit(fn, args, read_only, flush, orphaned)

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], read_only: bool, flush: bool = True,
        orphaned: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:  # fmt: skip
        """Queue a call; its future holds the outcome (`call` awaits it; a call queued from
        a callback need not)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(Op(fn, args, future, read_only, flush, orphaned))
        if len(self._flushers) < self.max_flushers:
            # A task's first step runs after every callback that is ready now: the calls that
            # arrive together are in the queue by then and share one transaction.
            self._flushers.add(loop.create_task(self._flush()))
        return future

    async def drain(self) -> None:
        """Wait until every queued call has run (nothing is dropped)."""
        while self._flushers:
            await asyncio.wait(set(self._flushers))

    async def _flush(self) -> None:
        group: list[Op] = []
        try:
            while self._pending:
                group, self._pending = self._pending[: self.max_group], self._pending[self.max_group :]
                outcomes, durable = await self._commit(group)
                if durable is not None:
                    await asyncio.wait([durable])
                    outcomes = _unless_lost(durable, outcomes)
                _answer(group, outcomes)
                group = []
        except BaseException as exc:
            # Never leave a caller waiting: whatever broke the flusher fails its calls and,
            # if no other flusher is left to take them, every queued call.
            error = StorageError(f"storage group commit failed: {exc!r}")
            stranded = [*group, *(self._pending if len(self._flushers) <= 1 else [])]
            for op in stranded:
                if not op.future.done():
                    op.future.set_exception(error)
            if len(self._flushers) <= 1:
                self._pending = []
            raise
        finally:
            # Leave the set now, not in a done callback: a call arriving before that callback
            # ran would see no free flusher slot and wait forever.
            task = asyncio.current_task()
            self._flushers.discard(task)


def _unless_lost(durable: asyncio.Future[None], outcomes: list[Outcome]) -> list[Outcome]:
    """``outcomes``, or failures if the commit is not known to be on disk: then no caller may
    take its call as done."""
    if not durable.cancelled() and durable.exception() is None:
        return outcomes
    error = None if durable.cancelled() else durable.exception()
    failure = error if isinstance(error, StorageError) else StorageError("the commit could not be made durable")
    return [None if outcome is None else (False, failure) for outcome in outcomes]


def _answer(group: list[Op], outcomes: list[Outcome]) -> None:
    for op, outcome in zip(group, outcomes, strict=True):
        if outcome is None:
            continue
        if op.future.done():
            if op.future.cancelled() and outcome[0] and op.orphaned is not None:
                op.orphaned(outcome[1])
            continue
        ok, value = outcome
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)


def run_group(
    group: list[Op],
    run: Callable[[Op], Any],
    savepoint: Callable[[], AbstractContextManager[None]],
    translate: Callable[[Exception], BaseException],
    *,
    isolated: bool,
    must_raise: Callable[[Exception], bool] = lambda exc: False,
) -> list[Outcome] | None:
    """Run the group's live calls in order inside the caller's transaction.

    Optimistically (``isolated=False``): None as soon as one call fails, and the caller rolls
    back and runs the group again isolated. Isolated: each call in ``savepoint()``, which rolls
    back to it when the call raises; the error goes to that caller alone (unless
    ``must_raise(error)``: then it propagates and the whole group is retried). A group with one
    live call needs no savepoint: its failure rolls back a transaction that is only its own."""
    outcomes: list[Outcome] = []
    live = sum(1 for op in group if not op.future.done())  # re-checked after any lock wait
    for op in group:
        if op.future.done():
            outcomes.append(None)
        elif live == 1:
            outcomes.append((True, run(op)))
        elif not isolated:
            try:
                outcomes.append((True, run(op)))
            except Exception as exc:  # noqa: BLE001 - rerun isolated, where it is reported to its caller
                if must_raise(exc):
                    raise
                return None
        else:
            try:
                with savepoint():
                    outcomes.append((True, run(op)))
            except Exception as exc:  # noqa: BLE001 - reported to that caller
                if must_raise(exc):
                    raise
                outcomes.append((False, translate(exc)))
    return outcomes
