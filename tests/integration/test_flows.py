"""Flows: atomic submission of a graph by step keys, and flow status, on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor, JobState, ValidationError

pytestmark = pytest.mark.anyio

DIAMOND: dict[str, Any] = {
    "flow_id": "build-42",
    "steps": [
        {"key": "fetch", "queue": "io", "name": "fetch", "data": {"repo": "acme/app"}},
        {"key": "lint", "queue": "cpu", "name": "lint", "needs": ["fetch"], "priority": 2},
        {"key": "test", "queue": "cpu", "name": "test", "needs": ["fetch"], "options": {"max_attempts": 5}},
        {"key": "ship", "queue": "io", "name": "ship", "needs": ["lint", "test"], "metadata": {"env": "prod"}},
    ],
}


async def test_a_flow_is_created_whole_and_runs_in_dependency_order(app: Conveyor) -> None:
    submitted = await app.submit_flow(DIAMOND)
    assert submitted.flow_id == "build-42" and list(submitted.ids) == ["fetch", "lint", "test", "ship"]
    status = await app.flow("build-42")
    by_name = {j.name: j for j in status.jobs}
    assert {n: j.state for n, j in by_name.items()} == {
        "fetch": JobState.WAITING, "lint": JobState.BLOCKED, "test": JobState.BLOCKED, "ship": JobState.BLOCKED,
    }  # fmt: skip
    assert by_name["ship"].depends_on == [submitted.ids["lint"], submitted.ids["test"]]
    assert (by_name["lint"].priority, by_name["test"].max_attempts, by_name["ship"].metadata) == (2, 5, {"env": "prod"})
    assert {j.flow_id for j in status.jobs} == {"build-42"}
    assert status.summary.model_dump() == {
        "total": 4, "waiting": 1, "active": 0, "delayed": 0, "blocked": 3, "completed": 0, "failed": 0, "dlq": 0, "cancelled": 0,
    }  # fmt: skip
    for queue in ("io", "cpu", "cpu", "io"):
        [job] = await app.pull(queue)
        await app.ack(job.id)
    summary = (await app.flow("build-42")).summary
    assert (summary.total, summary.completed) == (4, 4)


async def test_flow_ids_are_generated_and_unknown_flows_are_empty(app: Conveyor) -> None:
    submitted = await app.submit_flow({"steps": [{"key": "only", "queue": "q", "name": "x"}]})
    assert len(submitted.flow_id) == 36
    assert (await app.flow(submitted.flow_id)).summary.total == 1
    empty = await app.flow("nobody")
    assert empty.jobs == [] and empty.summary.total == 0


BAD_FLOWS: list[tuple[str, dict[str, Any], str]] = [
    ("cycle", {"steps": [{"key": "a", "queue": "q", "name": "a", "needs": ["b"]}, {"key": "b", "queue": "q", "name": "b", "needs": ["a"]}]}, "cycle"),
    ("cycle, not what waits on it", {"steps": [{"key": "c", "queue": "q", "name": "c", "needs": ["a"]}, {"key": "a", "queue": "q", "name": "a", "needs": ["b"]}, {"key": "b", "queue": "q", "name": "b", "needs": ["a"]}]}, r"cycle: 'a' → 'b' → 'a'$"),
    ("self", {"steps": [{"key": "a", "queue": "q", "name": "a", "needs": ["a"]}]}, "needs itself"),
    ("unknown", {"steps": [{"key": "a", "queue": "q", "name": "a", "needs": ["ghost"]}]}, "unknown step 'ghost'"),
    ("duplicate", {"steps": [{"key": "a", "queue": "q", "name": "a"}, {"key": "a", "queue": "q", "name": "b"}]}, "used twice"),
    ("bad step", {"steps": [{"key": "a", "queue": "q", "name": "a"}, {"key": "b", "queue": "q", "name": "b", "priority": "x"}]}, r"steps\.1\.options\.priority"),
    ("bad queue", {"steps": [{"key": "a", "queue": "no space", "name": "a"}]}, r"steps\[0\]\.queue"),
    ("empty", {"steps": []}, "steps"),
    ("too deep", {"steps": [{"key": f"s{i}", "queue": "q", "name": "s", "needs": [f"s{i - 1}"] if i else []} for i in range(12)]}, "limit is 10"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "flow", "message"), BAD_FLOWS, ids=[b[0] for b in BAD_FLOWS])
async def test_bad_flows_are_refused_whole(app: Conveyor, what: str, flow: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        await app.submit_flow(flow)
    assert await app.queues() == []


async def test_a_flow_failure_midway_creates_nothing(app: Conveyor) -> None:
    await app.push("q", "holder", unique_key="k")
    flow = {
        "steps": [
            {"key": "a", "queue": "q", "name": "a"},
            {"key": "b", "queue": "q", "name": "b", "unique_key": "k", "needs": ["a"]},
        ]
    }
    with pytest.raises(Exception, match="unique_key"):
        await app.submit_flow(flow)
    assert (await app.stats("q")).waiting == 1 and (await app.stats("q")).blocked == 0


async def test_a_flow_step_may_also_wait_for_an_existing_job(app: Conveyor) -> None:
    outside = await app.push("q", "outside")
    submitted = await app.submit_flow(
        {"steps": [{"key": "a", "queue": "q", "name": "a", "depends_on": [str(outside)]}]}
    )
    assert (await app.get(submitted.ids["a"])).state is JobState.BLOCKED  # type: ignore[union-attr]
    [job] = await app.pull("q")
    await app.ack(job.id)
    assert (await app.get(submitted.ids["a"])).state is JobState.WAITING  # type: ignore[union-attr]


async def test_a_flow_past_the_listing_limit_is_counted_whole(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pushes and follow-ups carrying a flow's id can take it past ``MAX_FLOW_JOBS``: the
    status lists that many, and its counts still cover every job."""
    from conveyor import Storage, _limits

    monkeypatch.setattr(_limits, "MAX_FLOW_JOBS", 3)
    ids = [await app.push("q", f"j{i}", flow_id="big") for i in range(5)]
    await app.pull("q")  # the oldest is active
    status = await app.flow("big")
    assert [job.id for job in status.jobs] == ids[:3]
    assert (status.summary.total, status.summary.waiting, status.summary.active) == (5, 4, 1)
    counted = {"waiting": 4, "active": 1}
    assert await app.storage.flow_counts("big") == counted
    assert await Storage.flow_counts(app.storage, "big") == counted  # the default a backend inherits
