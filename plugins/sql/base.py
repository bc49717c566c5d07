"""`SqlStorage`: the `Storage` methods mapped onto the primitives, for any SQL backend.

A backend supplies `_run` (execute one primitive in one transaction, notifying the queues it
woke) plus open/close/exclusive; everything else is shared.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

import anyio
from sqlalchemy import Connection

from conveyor import lifecycle
from conveyor.models import Job
from conveyor.schedules import Schedule
from conveyor.storage import Decide, Firing, Modified, QueueRow, ResolveParents, Storage, Transition
from conveyor.webhooks import Webhook

from . import claims, registry
from . import primitives as p
from . import schedules as sched
from .grouping import GroupQueue

T = TypeVar("T")
log = logging.getLogger("conveyor.storage")

Primitive = Callable[..., tuple[T, set[str]]]


class Wakeups:
    """Per-key wake-up signals (a queue's name, or the event log's key), used on the event
    loop thread only. A wake-up with nobody waiting is remembered, so a caller that checked,
    found nothing and then waits is not left sleeping past a change that came in between."""

    def __init__(self) -> None:
        self._events: dict[str, anyio.Event] = {}
        self._missed: set[str] = set()

    def wake(self, queues: set[str]) -> None:
        for queue in queues:
            event = self._events.pop(queue, None)
            if event is not None:
                event.set()
            else:
                self._missed.add(queue)

    def wake_all(self) -> None:
        self.wake(set(self._events))

    async def wait(self, queue: str, timeout_s: float) -> None:
        if queue in self._missed:
            self._missed.discard(queue)
            return
        event = self._events.get(queue)
        if event is None:
            event = self._events[queue] = anyio.Event()
        with anyio.move_on_after(timeout_s):
            await event.wait()


def _plain(fn: Callable[..., T]) -> Callable[..., tuple[T, set[str]]]:
    def run(conn: Connection, *args: Any) -> tuple[T, set[str]]:
        return fn(conn, *args), set()

    return run


class SqlStorage(Storage, abc.ABC):
    _groups: GroupQueue
    """The backend's group commit (`grouping`), which every call goes through."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.wakeups = Wakeups()

    @abc.abstractmethod
    async def _run(
        self, fn: Primitive[T], *args: Any, read_only: bool = False, flush: bool = True,
        orphaned: Callable[[Any], None] | None = None,
    ) -> T:  # fmt: skip
        """Run ``fn(conn, *args)`` in one transaction; wake the queues it returns after commit.
        ``read_only`` promises ``fn`` writes nothing (SQLite then takes no write lock).
        ``flush=False`` lets the commit return before it reaches the disk when nothing else in
        its group needs that (see `grouping.Op.flush`). ``orphaned`` gets ``fn``'s return value
        if ``fn`` ran but its caller gave up before hearing it (`grouping.Op.orphaned`)."""

    async def insert_jobs(
        self,
        jobs: Sequence[Job],
        data_texts: Sequence[str | None] | None = None,
        resolve: ResolveParents | None = None,
    ) -> None:
        texts = data_texts if data_texts is not None else [None] * len(jobs)
        if len(texts) != len(jobs):
            raise ValueError(f"{len(jobs)} jobs but {len(texts)} data texts")
        await self._run(_with_woken(p.insert_jobs), jobs, texts, resolve)

    async def claim_jobs(self, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Job]:
        # A claim lost to a power failure leaves its jobs waiting: they are delivered again, as
        # after a worker's crash (delivery is at least once). Nothing else is lost: the next
        # flushed commit (a push, an ack) makes every earlier one durable, in order.
        return await self._run(
            _plain(claims.claim_jobs), queue, count, now_ms, worker_id, flush=False, orphaned=self._give_back
        )

    async def claim_jobs_json(self, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[str]:
        if type(self).claim_jobs is not SqlStorage.claim_jobs:  # a subclass claims its own way: use it
            return await super().claim_jobs_json(queue, count, now_ms, worker_id)
        return await self._run(
            _plain(claims.claim_jobs_json), queue, count, now_ms, worker_id, flush=False, orphaned=self._give_back
        )

    def _give_back(self, ran: tuple[list[Job] | list[str], set[str]]) -> None:
        """A claim whose caller gave up while its group committed (a long-poll whose client
        left, a cancelled call): its jobs wait again, the attempt not counted, instead of
        sitting active for nobody until the stall timeout. Queued behind the claim's group."""
        ids = [job.id if isinstance(job, Job) else UUID(json.loads(job)["id"]) for job in ran[0]]
        if not ids:
            return
        released = self._groups.submit(
            p.modify_jobs, (ids, lifecycle.decide_release(round(time.time() * 1000))), read_only=False, flush=False
        )
        released.add_done_callback(self._given_back)

    def _given_back(self, released: asyncio.Future[Any]) -> None:
        if released.cancelled():
            return
        if (error := released.exception()) is not None:
            log.error("could not give back the jobs of a claim whose caller left: %r", error)
            return
        self.wakeups.wake(released.result()[1])

    async def modify_jobs(self, ids: Sequence[UUID], decide: Decide | Transition) -> list[Modified]:
        if isinstance(decide, Transition):
            return await self._run(p.transition_jobs, ids, decide)
        return await self._run(p.modify_jobs, ids, decide)

    async def get_job(self, job_id: UUID) -> Job | None:
        return await self._run(_plain(p.get_job), job_id, read_only=True)

    async def list_jobs(
        self, queue: str, state: str, *, limit: int, offset: int = 0, newest_first: bool = True
    ) -> list[Job]:
        return await self._run(_plain(p.list_jobs), queue, state, limit, offset, newest_first, read_only=True)

    async def list_flow(self, flow_id: str, limit: int) -> list[Job]:
        return await self._run(_plain(p.list_flow), flow_id, limit, read_only=True)

    async def flow_counts(self, flow_id: str) -> dict[str, int]:
        return await self._run(_plain(p.flow_counts), flow_id, read_only=True)

    async def promote_delayed(self, now_ms: int) -> int:
        return await self._run(p.promote_delayed, now_ms)

    async def find_overdue(self, now_ms: int, stall_before_ms: int, limit: int) -> dict[str, list[UUID]]:
        return await self._run(_plain(p.find_overdue), now_ms, stall_before_ms, limit, read_only=True)

    async def queues(self, queue: str | None = None) -> list[QueueRow]:
        return await self._run(_plain(p.list_queues), queue, read_only=True)

    async def set_paused(self, queue: str, paused: bool, now_ms: int) -> None:
        await self._run(_with_woken(p.set_paused), queue, paused, now_ms)

    async def wait_for_jobs(self, queue: str, timeout_s: float) -> None:
        await self.wakeups.wait(queue, timeout_s)

    async def insert_webhook(self, webhook: Webhook) -> None:
        await self._run(_plain(registry.insert_webhook), webhook)

    async def list_webhooks(self) -> list[Webhook]:
        return await self._run(_plain(registry.list_webhooks), read_only=True)

    async def delete_webhook(self, webhook_id: UUID) -> bool:
        return await self._run(_plain(registry.delete_webhook), webhook_id)

    async def insert_schedule(self, schedule: Schedule) -> None:
        await self._run(_plain(sched.insert_schedule), schedule)

    async def list_schedules(self) -> list[Schedule]:
        return await self._run(_plain(sched.list_schedules), read_only=True)

    async def get_schedule(self, name: str) -> Schedule | None:
        return await self._run(_plain(sched.get_schedule), name, read_only=True)

    async def delete_schedule(self, name: str) -> bool:
        return await self._run(_plain(sched.delete_schedule), name)

    async def set_schedule_paused(self, name: str, paused: bool, now_ms: int) -> bool:
        return await self._run(_plain(sched.set_schedule_paused), name, paused, now_ms)

    async def due_schedules(self, now_ms: int, limit: int) -> list[Schedule]:
        return await self._run(_plain(sched.due_schedules), now_ms, limit, read_only=True)

    async def fire_schedule(self, firing: Firing) -> bool | None:
        return await self._run(sched.fire_schedule, firing)


def _with_woken(fn: Callable[..., set[str]]) -> Callable[..., tuple[None, set[str]]]:
    def run(conn: Connection, *args: Any) -> tuple[None, set[str]]:
        return None, fn(conn, *args)

    return run
