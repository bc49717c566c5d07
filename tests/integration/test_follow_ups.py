"""Follow-up chaining on ack (spec rules), on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor, JobState, ValidationError

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio

PARENT_META: dict[str, Any] = {
    "workflow_id": "wf-1",
    "step_id": "build",
    "follow_ups": [
        {"queue": "image-process", "name": "render-pages", "data": {"doc_id": "d-1"}, "flow_id": "other-flow"},
        {"queue": "notify", "name": "tell", "priority": 3},
        {"queue": "audit", "name": "log", "metadata": {"own": True}, "options": {"max_attempts": 7}},
    ],
}


async def test_follow_ups_chain_across_queues_with_inheritance(app: Conveyor) -> None:
    parent = await app.push("build", "compile", {"repo": "acme"}, metadata=PARENT_META, flow_id="wf-1")
    await app.pull("build")
    await app.ack(parent, {"artifact": "s3://x"})
    [render] = await app.pull("image-process")
    [tell] = await app.pull("notify")
    [log] = await app.pull("audit")
    # rule 3: the parent joins depends_on; rule 4: flow id from the follow-up, else the parent
    assert render.depends_on == [parent] and render.flow_id == "other-flow"
    assert tell.depends_on == [parent] and tell.flow_id == "wf-1" and tell.priority == 3
    # child data defaults to the parent's result
    assert render.data == {"doc_id": "d-1"} and tell.data == {"artifact": "s3://x"}
    # rule 5: parent metadata minus follow_ups when the child has none
    assert tell.metadata == {"workflow_id": "wf-1", "step_id": "build"}
    assert log.metadata == {"own": True} and log.max_attempts == 7
    status = await app.flow("wf-1")
    assert {j.name for j in status.jobs} == {"compile", "tell", "log"}


async def test_follow_ups_are_created_in_the_ack_transaction_of_a_batch(app: Conveyor) -> None:
    meta = {"follow_ups": [{"queue": "next", "name": "n"}]}
    ids = await app.push_batch("q", [{"name": "a", "metadata": meta}, {"name": "b", "metadata": meta}])
    await app.pull("q", 2)
    results = await app.ack_batch([{"id": i, "result": str(i)} for i in ids])
    assert all(r.ok for r in results)
    children = await app.pull("next", 5)
    assert sorted(c.data for c in children) == sorted(str(i) for i in ids)
    assert {c.depends_on[0] for c in children} == set(ids)


async def test_a_follow_up_can_itself_carry_follow_ups(app: Conveyor) -> None:
    inner = {"follow_ups": [{"queue": "third", "name": "c"}]}
    root = await app.push("first", "a", metadata={"follow_ups": [{"queue": "second", "name": "b", "metadata": inner}]})
    await app.pull("first")
    await app.ack(root, 1)
    [second] = await app.pull("second")
    await app.ack(second.id, 2)
    [third] = await app.pull("third")
    assert third.data == 2 and third.depends_on == [second.id]


async def test_follow_ups_into_a_paused_queue_wait_there(app: Conveyor) -> None:
    await app.pause("later")
    parent = await app.push("q", "a", metadata={"follow_ups": [{"queue": "later", "name": "b"}]})
    await app.pull("q")
    await app.ack(parent)
    assert (await app.stats("later")).waiting == 1
    assert await app.pull("later") == []


@pytest.mark.parametrize(
    ("follow_ups", "field"),
    [
        ("not-a-list", "options.metadata.follow_ups"),
        ([{"name": "no-queue"}], "options.metadata.follow_ups[0].queue"),
        ([{"queue": "q", "name": "x", "colour": 1}], "options.metadata.follow_ups[0].colour"),
        ([{"queue": "bad queue", "name": "x"}], "options.metadata.follow_ups[0].queue"),
        ([{"queue": "q", "name": "x", "priority": "high"}], "options.metadata.follow_ups[0].options.priority"),
    ],
)
async def test_malformed_follow_ups_are_refused_at_push(app: Conveyor, follow_ups: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        await app.push("q", "a", metadata={"follow_ups": follow_ups})
    assert err.value.field == field, err.value.message
    assert await app.queues() == []


async def test_a_restart_between_parent_ack_and_child_pull_loses_nothing(storage_url: str, clock: FakeClock) -> None:
    if storage_url.endswith(":memory:"):
        pytest.skip("an in-memory database ends with its connection by design")
    opts: dict[str, Any] = {"clock": clock, "maintenance": False, "plugin_autoload": False}
    async with Conveyor(storage_url, **opts) as app:
        parent = await app.push("q", "a", metadata={"follow_ups": [{"queue": "next", "name": "b"}]})
        blocked = await app.push("next", "c", depends_on=[parent])
        await app.pull("q")
        await app.ack(parent, "r")
    async with Conveyor(storage_url, **opts) as app:
        pulled = await app.pull("next", 5)
        assert {j.name for j in pulled} == {"b", "c"} and all(j.state is JobState.ACTIVE for j in pulled)
        assert {j.id for j in pulled} >= {blocked}


async def test_a_follow_up_that_cannot_be_queued_is_dead_lettered_not_lost(app: Conveyor) -> None:
    await app.push("next", "holder", unique_key="k")
    parent = await app.push(
        "q",
        "a",
        metadata={"follow_ups": [{"queue": "next", "name": "b", "unique_key": "k"}, {"queue": "next", "name": "c"}]},
    )
    await app.pull("q")
    await app.ack(parent, "done")
    assert (await app.get(parent)).state is JobState.COMPLETED  # type: ignore[union-attr]
    [dead] = await app.dlq("next")
    assert dead.name == "b" and "could not be queued" in (dead.last_error or "") and "'k'" in (dead.last_error or "")
    assert {j.name for j in await app.pull("next", 5)} == {"holder", "c"}


@pytest.mark.parametrize(
    ("follow_ups", "field"),
    [
        ([{"queue": "q", "name": "n" * 1025}], "options.metadata.follow_ups[0].name"),
        (
            [{"queue": "q", "name": "x", "metadata": {"follow_ups": [{"queue": "q"}]}}],
            "options.metadata.follow_ups[0].options.metadata.follow_ups[0].name",
        ),
    ],
)
async def test_follow_ups_are_built_at_push_as_the_ack_would(app: Conveyor, follow_ups: Any, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        await app.push("q", "a", metadata={"follow_ups": follow_ups})
    assert err.value.field == field, err.value.message


async def test_a_chain_of_follow_ups_runs_for_many_generations(app: Conveyor) -> None:
    meta: dict[str, Any] = {}
    for generation in range(15):
        meta = (
            {"follow_ups": [{"queue": "chain", "name": f"g{generation}", "metadata": meta}]} if meta else {"end": True}
        )
    await app.push("chain", "root", metadata=meta)
    names = []
    while jobs := await app.pull("chain"):
        names.append(jobs[0].name)
        await app.ack(jobs[0].id)
    assert len(names) == 15 and names[0] == "root"


async def test_follow_ups_of_a_parent_removed_on_completion(app: Conveyor) -> None:
    parent = await app.push(
        "q", "a", remove_on_complete=True, metadata={"follow_ups": [{"queue": "next", "name": "b"}]}
    )
    await app.pull("q")
    await app.ack(parent, 5)
    assert await app.get(parent) is None
    [child] = await app.pull("next")
    assert child.data == 5 and child.depends_on == [parent]


@pytest.mark.parametrize("metadata", [["follow_ups"], "follow_ups", {"note": "no follow_ups here"}, 5])
async def test_metadata_that_only_mentions_follow_ups_acks_like_any_other(app: Conveyor, metadata: Any) -> None:
    """Metadata is any JSON value; text that merely contains ``"follow_ups"`` (a list, a
    string) must not break the ack of its job, nor of the jobs acked with it."""
    odd = await app.push("q", "odd", metadata=metadata)
    plain = await app.push("q", "plain")
    assert len(await app.pull("q", 2)) == 2
    results = await app.ack_batch([{"id": odd}, {"id": plain}])
    assert [r.ok for r in results] == [True, True]
    assert {(await app.get(i)).state for i in (odd, plain)} == {"completed"}  # type: ignore[union-attr]
    assert await app.pull("q") == []  # and nothing was spawned
