"""A claimed job is the job as stored after the claim, every field, on every backend.

SQLite reads the rows, then updates them and changes what it read the same way; the protocols'
claim (`pull_json`) reads a usual job's few columns (every optional field empty, `USUAL_SQL`)
and renders it from those. Each option alone and in pairs, and the paths that leave traces on a
waiting job (a retry, logs, progress, a timeout, follow-ups, a flow step), must come out as
``get`` then reads them.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from pydantic_core import to_json

from conveyor import Conveyor

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio

OPTIONS: dict[str, Any] = {
    "custom_id": "c", "ttl_ms": 60_000, "timeout_ms": 5_000, "unique_key": "u", "tags": ["t"],
    "group_id": "g", "metadata": {"m": 1}, "flow_id": "f", "lifo": True, "remove_on_complete": True,
    "remove_on_fail": True, "priority": 1, "max_attempts": 1, "backoff": "fixed", "backoff_delay_ms": 0,
    "delay_ms": 10,
}  # fmt: skip


async def claim_and_compare(app: Conveyor, queue: str, count: int, worker: str | None, as_json: bool) -> int:
    """Claim up to ``count`` jobs; each must equal what ``get`` reads right after. How many."""
    if as_json:
        texts = await app.pull_json(queue, count, worker_id=worker)
        for text in texts:
            stored = await app.get(json.loads(text)["id"])
            assert stored is not None
            assert json.loads(text) == json.loads(to_json(stored)), text
        return len(texts)
    jobs = await app.pull(queue, count, worker_id=worker)
    for job in jobs:
        assert job == await app.get(job.id)
    return len(jobs)


@pytest.mark.parametrize("as_json", [False, True], ids=["jobs", "json"])
async def test_each_option_alone_and_in_pairs(app: Conveyor, clock: FakeClock, as_json: bool) -> None:
    combos: list[dict[str, Any]] = [{}, *({k: v} for k, v in OPTIONS.items())]
    combos += [{a: OPTIONS[a], b: OPTIONS[b]} for a, b in itertools.combinations(OPTIONS, 2)]
    items = [{"name": f"j{i}", "data": {"i": i}, **combo} for i, combo in enumerate(combos)]
    for i, item in enumerate(items):
        if "unique_key" in item:
            item["unique_key"] = f"u{i}"
    for start in range(0, len(items), 50):
        await app.push_batch("q", items[start : start + 50])
    clock.advance(100)
    await app.run_maintenance()  # the delayed ones are waiting now
    clock.advance(3)
    claimed = await claim_and_compare(app, "q", 37, "w", as_json) + await claim_and_compare(app, "q", 37, None, as_json)
    while got := await claim_and_compare(app, "q", 1000, "w2", as_json):
        claimed += got
    assert claimed == len(items)


@pytest.mark.parametrize("as_json", [False, True], ids=["jobs", "json"])
async def test_jobs_that_ran_before(app: Conveyor, clock: FakeClock, as_json: bool) -> None:
    retried = await app.push("q", "retried", {"a": 1}, backoff_delay_ms=0)
    logged = await app.push("q", "logged", None)
    progressed = await app.push("q", "progressed")
    await app.push("q", "timed", timeout_ms=10)
    parent = await app.push("p", "parent", metadata={"follow_ups": [{"queue": "q", "name": "follow"}]})
    await app.pull("q", 4, worker_id="w0")
    await app.pull("p")
    await app.fail(retried, "boom")
    await app.progress(logged, 40, "half")
    await app.release(logged)
    await app.progress(progressed, 70)
    await app.release(progressed)
    await app.ack(parent, {"r": 1})
    clock.advance(10_000_000)
    await app.run_maintenance()  # the retry is due, the timed job timed out
    flow = await app.submit_flow(
        {"flow_id": "wf", "steps": [{"key": "a", "queue": "q", "name": "a"},
                                    {"key": "b", "queue": "q", "name": "b", "needs": ["a"]}]}
    )  # fmt: skip
    clock.advance(5)
    claimed = 0
    while got := await claim_and_compare(app, "q", 2, "w1", as_json):
        claimed += got
    assert claimed == 6  # retried, logged, progressed, timed, the follow-up, flow step a
    await app.ack(flow.ids["a"])
    clock.advance(5)
    assert await claim_and_compare(app, "q", 5, "w1", as_json) == 1  # b, released by a
