"""The command layer (shared by HTTP and TCP) on every backend: each command answers in the
shape its response model documents, and refuses unknown or missing parameters by name."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import pytest

from conveyor import Conveyor, UnknownCommandError, ValidationError, commands, wire

pytestmark = pytest.mark.anyio


async def run(app: Conveyor, cmd: str, /, **params: Any) -> dict[str, Any]:
    """Execute like a protocol would (JSON in, JSON out) and check the documented shape."""
    reply = json.loads(wire.encode(await commands.execute(app, cmd, json.loads(json.dumps(params)))))
    commands.COMMANDS[cmd].response.model_validate(reply)
    assert reply["ok"] is True
    return reply


async def test_every_command_answers_in_its_documented_shape(app: Conveyor) -> None:
    used: set[str] = set()

    async def call(cmd: str, /, **params: Any) -> dict[str, Any]:
        used.add(cmd)
        return await run(app, cmd, **params)

    job_id = (await call("push", queue="q", name="a", data={"n": 1}, priority=3))["id"]
    ids = (await call("push_batch", queue="q", jobs=[{"name": "b"}, {"name": "c", "queue": "other"}]))["ids"]
    assert (await call("pull", queue="q", worker_id="w"))["job"]["id"] == job_id
    await call("progress", id=job_id, progress=40, message="going", worker_id="w")
    await call("heartbeat", id=job_id, worker_id="w")
    await call("release", id=job_id, worker_id="w")  # back to waiting, the attempt not counted
    released = (await call("pull", queue="q", worker_id="w"))["job"]
    assert released["id"] == job_id and released["attempt"] == 0 and released["progress"] == 40
    await call("ack", id=job_id, result={"done": True}, worker_id="w")
    pulled = (await call("pull", queue="q", count=5))["jobs"]
    assert [job["id"] for job in pulled] == [ids[0]]
    failed = await call("fail", id=ids[0], error="boom")
    assert failed["will_retry"] is True and failed["retry"] is True and failed["state"] == "delayed"
    assert (await call("get", id=job_id))["job"]["result"] == {"done": True}
    assert (await call("stats", queue="q"))["counts"]["completed"] == 1
    await call("queue_pause", queue="other")
    assert {q["name"]: q["paused"] for q in (await call("queues"))["queues"]}["other"] is True
    await call("queue_resume", queue="other")
    await call("cancel", id=ids[1])
    assert (await call("pull", queue="q", count=1, wait_ms=0))["job"] is None
    last = (await call("push", queue="q", name="d", max_attempts=1))["id"]
    await call("pull", queue="q")
    await call("fail", id=last, error="fatal")
    assert [job["id"] for job in (await call("dlq", queue="q", limit=10))["jobs"]] == [last]
    submitted = await call("submit_flow", flow_id="wf-9", steps=[
        {"key": "a", "queue": "f", "name": "a"},
        {"key": "b", "queue": "f", "name": "b", "needs": ["a"], "metadata": {"step": "b"}},
    ])  # fmt: skip
    status = await call("flow", flow_id="wf-9")
    assert status["summary"]["blocked"] == 1 and status["summary"]["waiting"] == 1
    jobs = {job["name"]: job for job in status["jobs"]}
    assert jobs["b"]["depends_on"] == [submitted["ids"]["a"]] and "metadata" not in jobs["a"]
    [flow_a] = (await call("pull", queue="f", count=2))["jobs"]
    results = (await call("ack_batch", items=[{"id": flow_a["id"], "result": 1}, {"id": flow_a["id"]}]))["results"]
    assert [r["ok"] for r in results] == [True, False]
    created = await call("webhook_create", url="https://hooks.example.com/x", events=["job_dlq"], secret="k")
    assert created["webhook"]["events"] == ["job.dlq"] and created["webhook"]["has_secret"] is True
    assert (await call("webhook_get", id=created["id"]))["webhook"] == created["webhook"]
    assert (await call("webhook_list"))["webhooks"] == [created["webhook"]]
    await call("webhook_delete", id=created["id"])
    assert (await call("webhook_list"))["webhooks"] == []
    schedule = (await call("schedule_create", name="nightly", queue="q", job_name="report", job_data={"n": 1},
                           job_options={"priority": 2}, cron_expr="0 3 * * *", timezone="UTC"))["schedule"]  # fmt: skip
    assert (schedule["cron_expr"], schedule["job_options"], schedule["execution_count"]) == (
        "0 3 * * *",
        {"priority": 2},
        0,
    )
    assert (await call("schedule_get", name="nightly"))["schedule"] == schedule
    await call("schedule_pause", name="nightly")
    assert [s["paused"] for s in (await call("schedule_list"))["schedules"]] == [True]
    await call("schedule_resume", name="nightly")
    await call("schedule_delete", name="nightly")
    assert (await call("schedule_list"))["schedules"] == []
    assert used == set(commands.COMMANDS), set(commands.COMMANDS) - used


async def test_what_rustqueue_clients_rely_on(app: Conveyor) -> None:
    """RustQueue's Go and Node clients read ``acked``/``failed`` counts from ``ack_batch``, and
    its server records a ``fail`` without ``error`` as "unknown error"."""
    ids = (await run(app, "push_batch", queue="rq", jobs=[{"name": "a"}, {"name": "b", "max_attempts": 1}]))["ids"]
    await run(app, "pull", queue="rq", count=2)
    acked = await run(app, "ack_batch", items=[{"id": ids[0]}, {"id": ids[0]}, 5, {"id": "nope"}])
    assert (acked["acked"], acked["failed"]) == (1, 3)
    assert [r["id"] for r in acked["results"]] == [ids[0], ids[0], None, "nope"]  # no id: null, not "None"
    assert (await run(app, "fail", id=ids[1]))["state"] == "dlq"
    assert (await run(app, "get", id=ids[1]))["job"]["last_error"] == "unknown error"


async def test_ack_batch_reports_each_id_in_canonical_form_however_it_was_written(app: Conveyor) -> None:
    ids = (await run(app, "push_batch", queue="q", jobs=[{"name": "j"}] * 10))["ids"]
    await run(app, "pull", queue="q", count=10)
    # forms the parser takes (as uuid.UUID does): int(digits, 16) also takes a sign, whitespace
    # and non-ASCII digits in place of a leading 0 (UUIDv7 ids start with one until 2039);
    # none of it may come back, nor break the reply's JSON
    assert all(i.startswith("0") for i in ids)
    written = [ids[0], ids[1].upper(), "{" + ids[2] + "}", "urn:uuid:" + ids[3], ids[4].replace("-", ""),
               "+" + ids[5][1:], "\t" + ids[6][1:], "\n" + ids[7][1:], ids[8].replace("0", "\uff10"),
               " " + ids[9][1:]]  # fmt: skip
    assert all(UUID(w) == UUID(i) for w, i in zip(written, ids, strict=True))
    reply = json.loads(wire.encode(await commands.execute(app, "ack_batch", {"items": [{"id": w} for w in written]})))
    assert reply["acked"] == 10 and [r["id"] for r in reply["results"]] == ids
    [other] = (await run(app, "push_batch", queue="q", jobs=[{"name": "j"}]))["ids"]
    await run(app, "pull", queue="q")
    assert [r.id for r in await app.ack_batch([{"id": "\n" + other[1:]}])] == [other]  # the embedded API too


async def test_ack_batch_answers_on_the_wire_what_the_embedded_api_returns(app: Conveyor) -> None:
    """The command writes each result as JSON text (no `AckResult` objects): item for item, the
    same values as the embedded ``ack_batch``, whatever the item held; an id holding a lone
    surrogate comes back as its escape text, so strict JSON parsers can read the reply."""
    odd_items = [5, {"id": None}, {"id": "nope"}, {"id": "ü-\ud800"}, {"id": 7}, {"result": 1}, {"id": "x", "bad": 1}]

    async def batch(queue: str) -> list[Any]:
        ids = (await run(app, "push_batch", queue=queue, jobs=[{"name": "a"}, {"name": "b"}, {"name": "c"}]))["ids"]
        await run(app, "pull", queue=queue, count=2)  # the third stays waiting: refused
        return [{"id": ids[0], "result": {"n": "ü"}}, {"id": ids[0]}, {"id": ids[1]}, {"id": ids[2]}, *odd_items]

    embedded = [result.model_dump() for result in await app.ack_batch(await batch("embedded"))]
    items = await batch("wire")
    reply = await commands.execute(app, "ack_batch", {"items": items})
    wired = json.loads(wire.encode(reply))
    for index, (got, want) in enumerate(zip(wired["results"], embedded, strict=True)):
        if index < 4:  # the jobs differ between the two queues, and so do their ids in messages
            assert (got["ok"], got["error"] and got["error"]["code"]) == (
                want["ok"],
                want["error"] and want["error"]["code"],
            )
        elif isinstance(want["id"], str) and want["id"].startswith("ü"):  # a lone surrogate: shown as its escape text
            assert got == {**want, "id": "ü-\\ud800"}
        else:
            assert got == want
    assert not any("\ud800" <= c <= "\udfff" for c in json.dumps(wired, ensure_ascii=False))  # strict JSON parsers
    assert [r["id"] for r in wired["results"]] == [*[str(i["id"]) for i in items[:4]], None, None, "nope",
                                                   "ü-\\ud800", "7", None, "x"]  # fmt: skip
    assert (wired["acked"], wired["failed"]) == (2, 9)
    commands.COMMANDS["ack_batch"].response.model_validate(wired)


async def test_unknown_and_missing_parameters_are_named(app: Conveyor) -> None:
    with pytest.raises(UnknownCommandError, match="'explode'"):
        await commands.execute(app, "explode", {})
    with pytest.raises(ValidationError) as err:
        await commands.execute(app, "ack", {"id": "x", "reslt": 1})
    assert err.value.field == "reslt" and "unknown field" in err.value.message
    with pytest.raises(ValidationError) as err:
        await commands.execute(app, "fail", {"error": "boom"})
    assert err.value.field == "id"
    with pytest.raises(ValidationError) as err:
        await commands.execute(app, "push", {"name": "x"})  # HTTP takes the queue from the path; TCP must send it
    assert err.value.field == "queue" and "required" in err.value.message
    with pytest.raises(ValidationError) as err:
        await commands.execute(app, "pull", [])
    assert "JSON object" in err.value.message
    with pytest.raises(ValidationError) as err:
        await commands.execute(app, "submit_flow", {"steps": "nope"})
    assert err.value.to_wire()["code"] == "VALIDATION_ERROR" and err.value.field == "steps"
    with pytest.raises(ValidationError):
        await commands.execute(app, "flow", {"flow_id": 42})
    assert await app.queues() == []
