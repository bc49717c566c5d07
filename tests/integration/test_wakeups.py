"""Long-poll pulls are woken by pushes: in-process on every backend, and across nodes on
PostgreSQL through LISTEN/NOTIFY (with the safety poll pushed out of reach, a pull that returns
the job can only have been woken by the notification)."""

from __future__ import annotations

import anyio
import pytest

from conveyor import Conveyor
from conveyor.plugins.sql import postgres

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio


async def test_a_waiting_pull_gets_a_job_pushed_later(app: Conveyor) -> None:
    got: list = []

    async def worker() -> None:
        got.extend(await app.pull("q", 5, wait_ms=60_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.sleep(0.05)
        job_id = await app.push("q", "late")
    assert [j.id for j in got] == [job_id]


async def test_a_waiting_pull_times_out_empty(app: Conveyor) -> None:
    assert await app.pull("q", wait_ms=50) == []


async def test_listen_notify_wakes_a_puller_on_another_node(
    pg_schema: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "SAFETY_POLL_S", 3600.0)
    opts = {"maintenance": False, "plugin_autoload": False}
    async with Conveyor(pg_schema, **opts) as node_a, Conveyor(pg_schema, **opts) as node_b:
        got: list = []

        async def worker() -> None:
            got.extend(await node_b.pull("q", wait_ms=120_000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(worker)
            await anyio.sleep(0.2)  # let node B start waiting
            job_id = await node_a.push("q", "from-a")
        assert [j.id for j in got] == [job_id]


async def test_retries_that_become_waiting_wake_pullers(app: Conveyor) -> None:
    job_id = await app.push("q", "again", backoff_delay_ms=0)
    await app.pull("q")
    got: list = []

    async def worker() -> None:
        got.extend(await app.pull("q", wait_ms=60_000))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await anyio.sleep(0.05)
        await app.fail(job_id, "transient")
    assert [j.id for j in got] == [job_id]
