"""Job dependencies (DAG) on every backend: blocking, promotion in the ack's transaction,
cascades to the DLQ, refused parents and depth, and promotion surviving a restart."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from conveyor import Conveyor, ValidationError

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio


async def states(app: Conveyor, *ids: UUID) -> list[str]:
    return [(await app.get(i)).state.value for i in ids]  # type: ignore[union-attr]


async def run(app: Conveyor, queue: str = "q") -> UUID:
    [job] = await app.pull(queue)
    await app.ack(job.id, {"ran": job.name})
    return job.id


async def test_diamond_promotes_the_join_only_after_both_branches(app: Conveyor) -> None:
    a = await app.push("q", "a")
    b = await app.push("q", "b", depends_on=[str(a)])
    c = await app.push("q", "c", depends_on=[a])
    d = await app.push("q", "d", depends_on=[b, c], flow_id="wf")
    assert await states(app, a, b, c, d) == ["waiting", "blocked", "blocked", "blocked"]
    assert (await app.get(d)).depends_on == [b, c]  # type: ignore[union-attr]
    assert await run(app) == a
    assert await states(app, b, c, d) == ["waiting", "waiting", "blocked"]
    first = await run(app)
    assert await states(app, d) == ["blocked"]
    second = await run(app)
    assert {first, second} == {b, c}
    assert await states(app, d) == ["waiting"]
    assert await run(app) == d


async def test_a_child_of_completed_parents_starts_waiting(app: Conveyor) -> None:
    a = await app.push("q", "a")
    await run(app)
    child = await app.push("q", "child", depends_on=[a])
    assert await states(app, child) == ["waiting"]


async def test_a_released_child_honours_its_own_delay(app: Conveyor, clock: FakeClock) -> None:
    a = await app.push("q", "a")
    child = await app.push("q", "child", depends_on=[a], delay_ms=60_000)
    await run(app)
    assert await states(app, child) == ["delayed"]
    clock.advance(60_000)
    await app.run_maintenance()
    assert await states(app, child) == ["waiting"]


async def test_a_dead_parent_cascades_through_three_levels(app: Conveyor) -> None:
    root = await app.push("q", "root", max_attempts=1)
    mid = await app.push("q", "mid", depends_on=[root])
    leaf = await app.push("q", "leaf", depends_on=[mid])
    leaf2 = await app.push("q", "leaf2", depends_on=[leaf])
    other = await app.push("q", "other")
    [job] = await app.pull("q")
    assert job.id == root
    await app.fail(root, "boom")
    assert await states(app, root, mid, leaf, leaf2, other) == ["dlq", "dlq", "dlq", "dlq", "waiting"]
    for job_id in (mid, leaf, leaf2):
        error = (await app.get(job_id)).last_error  # type: ignore[union-attr]
        assert error is not None and str(root) in error and "DLQ" in error
    assert {j.id for j in await app.dlq("q")} == {root, mid, leaf, leaf2}


async def test_cancelling_a_parent_cascades(app: Conveyor) -> None:
    parent = await app.push("q", "parent", delay_ms=10_000)
    child = await app.push("q", "child", depends_on=[parent])
    grandchild = await app.push("q", "grandchild", depends_on=[child])
    await app.cancel(parent)
    assert await states(app, parent, child, grandchild) == ["cancelled", "dlq", "dlq"]
    assert "cancelled" in ((await app.get(grandchild)).last_error or "")  # type: ignore[union-attr]


async def test_a_child_with_two_parents_dies_when_either_dies(app: Conveyor) -> None:
    good = await app.push("q", "good", priority=1)
    bad = await app.push("q", "bad", max_attempts=1)
    child = await app.push("q", "child", depends_on=[good, bad])
    await run(app)  # good
    [job] = await app.pull("q")
    await app.fail(job.id, "x")
    assert await states(app, child) == ["dlq"]


@pytest.mark.parametrize("state", ["missing", "dlq", "cancelled"])
async def test_missing_dead_or_cancelled_parents_are_refused(app: Conveyor, state: str) -> None:
    parent: Any = uuid4()
    if state == "dlq":
        parent = await app.push("q", "p", max_attempts=1)
        await app.pull("q")
        await app.fail(parent, "x")
    elif state == "cancelled":
        parent = await app.push("q", "p")
        await app.cancel(parent)
    with pytest.raises(ValidationError, match=str(parent)) as err:
        await app.push("q", "child", depends_on=[parent])
    assert err.value.field == "options.depends_on"
    with pytest.raises(ValidationError, match=r"jobs\[1\]\.options\.depends_on"):
        await app.push_batch("q", [{"name": "ok"}, {"name": "child", "depends_on": [str(parent)]}])
    counts = await app.stats("q")
    assert counts.waiting == 0 and counts.blocked == 0


async def test_chains_deeper_than_the_limit_are_refused(storage_url: str, clock: FakeClock) -> None:
    async with Conveyor(storage_url, clock=clock, max_dag_depth=3, maintenance=False, plugin_autoload=False) as app:
        chain = [await app.push("q", "j0")]
        for i in range(1, 4):
            chain.append(await app.push("q", f"j{i}", depends_on=[chain[-1]]))
        with pytest.raises(ValidationError, match="4 deep; the limit is 3"):
            await app.push("q", "too-deep", depends_on=[chain[-1]])
        await app.push("q", "fine", depends_on=[chain[-2]])


async def test_batch_push_keeps_dependencies(app: Conveyor) -> None:
    parent = await app.push("q", "parent")
    ids = await app.push_batch("q", [{"name": "c1", "depends_on": [str(parent)]}, {"name": "free"}])
    assert await states(app, *ids) == ["blocked", "waiting"]
    assert {j.id for j in await app.pull("q", 5)} == {parent, ids[1]}
    await app.ack_batch([{"id": j} for j in [parent, ids[1]]])
    assert await states(app, ids[0]) == ["waiting"]


async def test_promotion_survives_a_restart(storage_url: str, clock: FakeClock) -> None:
    if storage_url.endswith(":memory:"):
        pytest.skip("an in-memory database ends with its connection by design")
    opts: dict[str, Any] = {"clock": clock, "maintenance": False, "plugin_autoload": False}
    async with Conveyor(storage_url, **opts) as app:
        a = await app.push("q", "a")
        b = await app.push("q", "b", depends_on=[a])
        c = await app.push("q", "c", depends_on=[a, b])
    async with Conveyor(storage_url, **opts) as app:
        assert await run(app) == a
    async with Conveyor(storage_url, **opts) as app:
        assert await states(app, b, c) == ["waiting", "blocked"]
        assert await run(app) == b
    async with Conveyor(storage_url, **opts) as app:
        assert await run(app) == c


async def test_two_nodes_completing_both_parents_at_once_release_the_child(pg_schema: str) -> None:
    opts: dict[str, Any] = {"maintenance": False, "plugin_autoload": False}
    async with Conveyor(pg_schema, **opts) as a, Conveyor(pg_schema, **opts) as b:
        for _ in range(10):
            left = await a.push("q", "left")
            right = await a.push("q", "right")
            join = await a.push("q", "join", depends_on=[left, right])
            await a.pull("q", 2)
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.ack, left)
                tg.start_soon(b.ack, right)
            assert await states(a, join) == ["waiting"]
            await run(a)


async def test_release_and_cascade_work_in_chunks(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.plugins.sql import dialect

    monkeypatch.setattr(dialect, "CHUNK", 3)
    parents = [await app.push("q", f"p{i}") for i in range(4)]
    kids = await app.push_batch("q", [{"name": f"k{i}", "depends_on": [str(p) for p in parents]} for i in range(10)])
    await app.pull("q", 4)
    await app.ack_batch([{"id": p} for p in parents])
    assert set(await states(app, *kids)) == {"waiting"}


async def test_a_cascade_catches_a_child_pushed_while_it_waited(pg_schema: str) -> None:
    """Node B holds a descendant's row lock (as a push onto it does) while node A's parent dies;
    B then commits a new child of that descendant. A's cascade must still reach the new child."""
    import psycopg

    from conveyor.plugins.sql.codec import encode_job
    from conveyor.plugins.sql.dialect import COLUMN_LIST, COLUMNS, POSTGRES

    opts: dict[str, Any] = {"maintenance": False, "plugin_autoload": False}
    async with Conveyor(pg_schema, **opts) as a:
        parent = await a.push("q", "parent", max_attempts=1)
        middle = await a.push("q", "middle", depends_on=[parent])
        template = await a.get(middle)
        assert template is not None
        late = template.model_copy(update={"id": uuid4(), "name": "late", "depends_on": [middle]})
        await a.pull("q")
        base, schema = pg_schema.split("?schema=")
        async with await psycopg.AsyncConnection.connect(base, options=f"-csearch_path={schema}") as other:
            await other.execute("SELECT id FROM conveyor_jobs WHERE id = %s FOR UPDATE", (middle,))
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.fail, parent, "boom")
                await anyio.sleep(0.3)  # A's cascade is now waiting for the lock on `middle`
                row = encode_job(late, POSTGRES)
                await other.execute(
                    f"INSERT INTO conveyor_jobs ({COLUMN_LIST}) VALUES ({', '.join(['%s'] * len(COLUMNS))})", row
                )
                await other.execute(
                    "INSERT INTO conveyor_job_deps (child_id, parent_id) VALUES (%s, %s)", (late.id, middle)
                )
                await other.commit()
        assert await states(a, parent, middle, late.id) == ["dlq", "dlq", "dlq"]


async def test_edge_cases_of_release_and_cascade(app: Conveyor, clock: FakeClock) -> None:
    # a parent removed on completion still releases its child
    removed = await app.push("q", "removed", remove_on_complete=True)
    child = await app.push("q", "child", depends_on=[removed])
    await run(app)
    assert await app.get(removed) is None and await states(app, child) == ["waiting"]
    await run(app)
    # both parents acked in one batch release the shared child once
    left, right = await app.push("q", "left"), await app.push("q", "right")
    join = await app.push("q", "join", depends_on=[left, right])
    await app.pull("q", 2)
    await app.ack_batch([{"id": left}, {"id": right}])
    assert await states(app, join) == ["waiting"]
    await run(app)
    # a parent removed on failure still takes its child to the DLQ
    doomed = await app.push("q", "doomed", max_attempts=1, remove_on_fail=True)
    orphan = await app.push("q", "orphan", depends_on=[doomed])
    await app.pull("q")
    await app.fail(doomed, "x")
    assert await app.get(doomed) is None and await states(app, orphan) == ["dlq"]
    # a parent that expires unstarted takes its child to the DLQ
    stale = await app.push("q", "stale", ttl_ms=1_000, delay_ms=5_000)
    waiting_child = await app.push("q", "waiting-child", depends_on=[stale])
    clock.advance(1_000)
    await app.run_maintenance()
    assert await states(app, stale, waiting_child) == ["dlq", "dlq"]
