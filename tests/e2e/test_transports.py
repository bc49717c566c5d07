"""One scenario suite, three transports: the embedded API, the HTTP client and the TCP client
(both against a real ``conveyor serve``) must give identical results — same values, same
states, same errors with the same codes and fields."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import BaseModel

import conveyor
from conveyor import ConveyorError

from .conftest import serve

pytestmark = pytest.mark.anyio

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMES = {"created_at", "updated_at", "started_at", "completed_at", "last_heartbeat", "delay_until",
         "next_attempt_at", "timestamp", "last_run_at"}  # fmt: skip

Scenario = Callable[[Any], Awaitable[Any]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


async def attempt(call: Awaitable[Any]) -> Any:
    """The call's result, or its error as (class, code, field, message)."""
    try:
        return await call
    except ConveyorError as exc:
        return ("error", type(exc).__name__, exc.code, exc.details.get("field"), exc.message)


@scenario
async def lifecycle(q: Any) -> Any:
    job_id = await q.push("life", "compile", {"repo": "acme"}, priority=7, max_attempts=2, backoff="fixed",
                          backoff_delay_ms=0, metadata={"step": "build"}, tags=["ci"])  # fmt: skip
    [job] = await q.pull("life", worker_id="w1")
    await q.progress(job_id, float("-inf"), worker_id="w1")  # clamped, as any out-of-range report
    await q.progress(job_id, 130, "most of it", worker_id="w1")
    await q.heartbeat(job_id, worker_id="w1")
    failed = await q.fail(job_id, "exit 1", worker_id="w1")
    [given_back] = await q.pull("life", count=1, worker_id="w3")
    await q.release(job_id, worker_id="w3")  # back to waiting, the attempt not counted
    refused_release = await attempt(q.release(job_id))
    [again] = await q.pull("life", count=1, worker_id="w2")
    stale = await attempt(q.ack(job_id, "late", worker_id="w1"))
    await q.ack(job_id, {"ok": 1}, worker_id="w2")
    return [job, failed, given_back, refused_release, again, stale, await q.get(job_id), await q.stats("life"),
            await q.get(UUID_ZERO)]  # fmt: skip


UUID_ZERO = "00000000-0000-7000-8000-000000000000"


@scenario
async def batches(q: Any) -> Any:
    ids = await q.push_batch("batch", [{"name": f"j{i}", "data": i, "priority": i % 3} for i in range(6)])
    jobs = await q.pull("batch", count=4)
    results = await q.ack_batch([{"id": j.id, "result": j.data} for j in jobs] + [{"id": UUID_ZERO}, {"id": "nope"}])
    refused = await attempt(q.push_batch("batch", [{"name": "ok"}, {"name": "bad", "options": {"max_attempts": 0}}]))
    return [ids, jobs, results, refused, await q.stats("batch"), await q.pull("batch", count=10)]


@scenario
async def flows(q: Any) -> Any:
    submitted = await q.submit_flow({"flow_id": "f-1", "steps": [
        {"key": "a", "queue": "flow", "name": "a"},
        {"key": "b", "queue": "flow", "name": "b", "needs": ["a"], "max_attempts": 1},
        {"key": "c", "queue": "flow", "name": "c", "needs": ["b"]},
    ]})  # fmt: skip
    [a] = await q.pull("flow")
    await q.ack(a.id, "A")
    [b] = await q.pull("flow")
    outcome = await q.fail(b.id, "broken")
    cycle = await attempt(q.submit_flow({"steps": [{"key": "x", "queue": "flow", "name": "x", "needs": ["x"]}]}))
    return [submitted, outcome, await q.flow("f-1"), await q.dlq("flow"), cycle]


@scenario
async def follow_ups(q: Any) -> Any:
    parent = await q.push(
        "fu", "ocr", flow_id="run-1", metadata={"run": 1, "follow_ups": [{"queue": "fu-next", "name": "render"}]}
    )
    [job] = await q.pull("fu")
    await q.ack(job.id, {"pages": 2})
    return [parent, await q.pull("fu-next"), await q.flow("run-1")]


@scenario
async def queue_management(q: Any) -> Any:
    kept = await q.push("mgmt", "kept", unique_key="k")
    duplicate = await attempt(q.push("mgmt", "dup", unique_key="k"))
    await q.pause("mgmt")
    paused = await attempt(q.push("mgmt", "late"))
    nothing = await q.pull("mgmt")
    listed = [info for info in await q.queues() if info.name == "mgmt"]
    await q.resume("mgmt")
    cancel_active = await attempt(q.cancel((await q.pull("mgmt"))[0].id))
    other = await q.push("mgmt", "other", delay_ms=60_000)
    await q.cancel(other)
    return [kept, duplicate, paused, nothing, listed, cancel_active, await q.get(other), await q.stats("mgmt")]


@scenario
async def schedules(q: Any) -> Any:
    spec = {"name": "yearly", "queue": "sched", "job_name": "report", "job_data": {"k": [1, "é"]},
            "job_options": {"priority": 3, "tags": ["cron"]}, "cron_expr": "0 3 1 1 *", "timezone": "Europe/Paris"}  # fmt: skip
    created = await q.add_schedule(spec)
    refused = [
        await attempt(q.add_schedule({**spec, "cron_expr": None, "every_ms": 5})),  # the name is taken
        await attempt(q.add_schedule({**spec, "name": "b", "cron_expr": "0 25 * * *"})),
        await attempt(q.add_schedule({**spec, "name": "b", "every_ms": 5})),
        await attempt(q.add_schedule({**spec, "name": "b", "timezone": "Nowhere/City"})),
        await attempt(q.add_schedule({**spec, "name": "b", "job_options": {"max_attempts": 0}})),
        await attempt(q.add_schedule({**spec, "name": "bad name"})),
    ]
    await q.pause_schedule("yearly")
    paused = await q.get_schedule("yearly")
    await q.resume_schedule("yearly")
    listed = await q.schedules()
    await q.remove_schedule("yearly")
    missing = [await attempt(call("yearly")) for call in (q.get_schedule, q.remove_schedule, q.pause_schedule)]
    return [created, refused, paused, listed, missing, await q.schedules()]


@scenario
async def bad_input(q: Any) -> Any:
    return [
        await attempt(q.push("bad", "")),
        await attempt(q.push("bad queue", "x")),
        await attempt(q.push("bad", "x", colour="red")),
        await attempt(q.push("bad", "x", data="d" * (1024 * 1024 + 1))),
        await attempt(q.push("bad", "x", metadata={"m": "m" * 70_000})),
        await attempt(q.pull("bad", count=0)),
        await attempt(q.pull("bad", count=5000)),
        await attempt(q.ack("not-a-uuid")),
        await attempt(q.ack(UUID_ZERO)),
        await attempt(q.fail(UUID_ZERO, "e" * 20_000)),
        await attempt(q.progress(UUID_ZERO, "half")),
        await attempt(q.dlq("bad", limit=0)),
        await attempt(q.flow("")),
        await attempt(q.push("bad", "x", {"f": object()})),
        await attempt(q.push("bad", "x", metadata={"f": {1, 2}})),
        await attempt(q.push("bad", "x", {"text": "\ud800"})),
        await attempt(q.push("bad", "x", {1: "a", "1": "b"})),
        await attempt(q.push("..", "x")),
        await attempt(q.push_batch("bad", None)),
        await attempt(q.pull("bad", None)),
        await attempt(q.pull("bad", wait_ms="5")),
        await attempt(q.progress(UUID_ZERO, float("nan"))),
        [info for info in await q.queues() if info.name.startswith("bad")],
    ]


def normalize(value: Any, names: dict[str, str]) -> Any:
    """JSON-like, with every UUID replaced by the order it was first seen and times dropped."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: normalize(v, names) for k, v in sorted(value.items()) if k not in TIMES}
    if isinstance(value, (list, tuple)):
        return [normalize(v, names) for v in value]
    text = str(value) if not isinstance(value, (int, float, bool, type(None))) else value
    if isinstance(text, str) and UUID_RE.search(text):
        return UUID_RE.sub(lambda m: names.setdefault(m.group(0), f"<id{len(names)}>"), text)
    return text


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A storage of its own per transport: each sees every scenario once."""
    root = tmp_path_factory.mktemp("transports")
    servers = {name: serve(f"sqlite:///{root / name}.db") for name in ("http", "tcp")}
    yield {"embedded": f"sqlite:///{root / 'embedded.db'}", **{n: s.addresses[n] for n, s in servers.items()}}
    for served in servers.values():
        assert served.stop() == 0, served.output


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario_gives_the_same_result_on_every_transport(urls: dict[str, str], name: str) -> None:
    results = {}
    for transport in ("embedded", "http", "tcp"):
        async with conveyor.connect(urls[transport]) as q:
            results[transport] = normalize(await SCENARIOS[name](q), {})
    assert results["http"] == results["embedded"]
    assert results["tcp"] == results["embedded"]
