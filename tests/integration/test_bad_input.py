"""Bad input: each limit and wrong type gives a `ConveyorError` with the right code, status and
a message naming the field -- and stores nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import Conveyor, ConveyorError, JobSpec, LimitExceededError, ValidationError

pytestmark = pytest.mark.anyio

MB = 1024 * 1024
Call = Callable[[Conveyor], Awaitable[Any]]

CASES: list[tuple[str, Call, type[ConveyorError], int, str]] = [
    ("queue too long", lambda a: a.push("q" * 257, "j"), LimitExceededError, 413, "queue"),
    ("queue bad chars", lambda a: a.push("my queue", "j"), ValidationError, 400, "queue"),
    ("queue empty", lambda a: a.push("", "j"), ValidationError, 400, "queue"),
    ("queue not str", lambda a: a.push(5, "j"), ValidationError, 400, "queue"),  # type: ignore[arg-type]
    ("name too long", lambda a: a.push("q", "n" * 1025), LimitExceededError, 413, "name"),
    ("name multibyte too long", lambda a: a.push("q", "é" * 513), LimitExceededError, 413, "name"),
    ("name empty", lambda a: a.push("q", ""), ValidationError, 400, "name"),
    ("name not str", lambda a: a.push("q", 123), ValidationError, 400, "name"),  # type: ignore[arg-type]
    ("data over 1 MB", lambda a: a.push("q", "j", "x" * MB), LimitExceededError, 413, "data"),
    ("data not JSON", lambda a: a.push("q", "j", {"f": object()}), ValidationError, 400, "data"),
    ("data keys collide in JSON", lambda a: a.push("q", "j", {"x": [{1: "a", "1": "b"}]}), ValidationError, 400, "data"),
    ("metadata keys collide in JSON", lambda a: a.push("q", "j", metadata={None: 1, "null": 2}), ValidationError, 400, "options.metadata"),
    ("metadata over 64 KB", lambda a: a.push("q", "j", metadata={"k": "v" * 65_536}), LimitExceededError, 413, "options.metadata"),
    ("unique key too long", lambda a: a.push("q", "j", unique_key="k" * 1025), LimitExceededError, 413, "options.unique_key"),
    ("priority wrong type", lambda a: a.push("q", "j", priority="high"), ValidationError, 400, "options.priority"),
    ("priority as numeric string", lambda a: a.push("q", "j", priority="5"), ValidationError, 400, "options.priority"),
    ("priority out of range", lambda a: a.push("q", "j", priority=2**40), ValidationError, 400, "options.priority"),
    ("max_attempts zero", lambda a: a.push("q", "j", max_attempts=0), ValidationError, 400, "options.max_attempts"),
    ("negative delay", lambda a: a.push("q", "j", delay_ms=-1), ValidationError, 400, "options.delay_ms"),
    ("unknown backoff", lambda a: a.push("q", "j", backoff="random"), ValidationError, 400, "options.backoff"),
    ("unknown option", lambda a: a.push("q", "j", options={"colour": "red"}), ValidationError, 400, "options.colour"),
    ("unknown top-level field", lambda a: a.push_batch("q", [{"name": "j", "colour": 1}]), ValidationError, 400, "jobs[0].colour"),
    ("options not an object", lambda a: a.push("q", "j", options=[1]), ValidationError, 400, "options"),
    ("option flat and nested", lambda a: a.push("q", "j", options={"priority": 1}, priority=2), ValidationError, 400, "priority"),
    ("tags not a list", lambda a: a.push("q", "j", tags="a"), ValidationError, 400, "options.tags"),
    ("bool is not an int", lambda a: a.push("q", "j", timeout_ms=True), ValidationError, 400, "options.timeout_ms"),
    ("depends_on not uuids", lambda a: a.push("q", "j", depends_on=["x"]), ValidationError, 400, "options.depends_on.0"),
    ("batch empty", lambda a: a.push_batch("q", []), ValidationError, 400, "jobs"),
    ("batch too big", lambda a: a.push_batch("q", [{"name": "j"}] * 1001), ValidationError, 400, "jobs"),
    ("batch not a list", lambda a: a.push_batch("q", {"name": "j"}), ValidationError, 400, "jobs"),  # type: ignore[arg-type]
    ("batch item data too big", lambda a: a.push_batch("q", [{"name": "a"}, {"name": "b", "data": "x" * MB}]), LimitExceededError, 413, "jobs[1].data"),
    ("batch item queue invalid", lambda a: a.push_batch("q", [{"name": "a", "queue": "no spaces"}]), ValidationError, 400, "jobs[0].queue"),
    ("custom_id too long", lambda a: a.push("q", "j", custom_id="c" * 1025), LimitExceededError, 413, "options.custom_id"),
    ("tag too long", lambda a: a.push("q", "j", tags=["ok", "t" * 257]), LimitExceededError, 413, "options.tags[1]"),
    ("too many tags", lambda a: a.push("q", "j", tags=["t"] * 65), ValidationError, 400, "options.tags"),
    ("group_id too long", lambda a: a.push("q", "j", group_id="g" * 257), LimitExceededError, 413, "options.group_id"),
    ("flow_id too long", lambda a: a.push("q", "j", flow_id="f" * 257), LimitExceededError, 413, "options.flow_id"),
    ("NUL in name", lambda a: a.push("q", "a\x00b"), ValidationError, 400, "name"),
    ("NUL in unique key", lambda a: a.push("q", "j", unique_key="k\x00"), ValidationError, 400, "options.unique_key"),
    ("NaN in data", lambda a: a.push("q", "j", {"x": float("nan")}), ValidationError, 400, "data"),
    ("Infinity in metadata", lambda a: a.push("q", "j", metadata={"x": float("inf")}), ValidationError, 400, "options.metadata"),
    ("worker_id too long", lambda a: a.pull("q", worker_id="w" * 257), LimitExceededError, 413, "worker_id"),
    ("worker_id not str", lambda a: a.pull("q", worker_id=7), ValidationError, 400, "worker_id"),  # type: ignore[arg-type]
    ("NUL in error", lambda a: a.fail("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", "e\x00"), ValidationError, 400, "error"),
    ("pull count zero", lambda a: a.pull("q", 0), ValidationError, 400, "count"),
    ("pull count huge", lambda a: a.pull("q", 1001), ValidationError, 400, "count"),
    ("pull count string", lambda a: a.pull("q", "5"), ValidationError, 400, "count"),  # type: ignore[arg-type]
    ("pull count bool", lambda a: a.pull("q", True), ValidationError, 400, "count"),
    ("pull negative wait", lambda a: a.pull("q", wait_ms=-1), ValidationError, 400, "wait_ms"),
    ("ack bad id", lambda a: a.ack("not-a-uuid"), ValidationError, 400, "id"),
    ("ack result over 1 MB", lambda a: a.ack("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", "r" * MB), LimitExceededError, 413, "result"),
    ("fail error over 10 KB", lambda a: a.fail("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", "e" * 10_241), LimitExceededError, 413, "error"),
    ("fail error not str", lambda a: a.fail("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", 5), ValidationError, 400, "error"),  # type: ignore[arg-type]
    ("progress not a number", lambda a: a.progress("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", "50"), ValidationError, 400, "progress"),  # type: ignore[arg-type]
    ("progress NaN", lambda a: a.progress("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", float("nan")), ValidationError, 400, "progress"),
    ("progress message too long", lambda a: a.progress("01a21ed9-201d-7788-bdd4-54a4c7e31dd9", 5, "m" * 10_241), LimitExceededError, 413, "message"),
    ("get bad id", lambda a: a.get("123"), ValidationError, 400, "id"),
    ("cancel bad id", lambda a: a.cancel(None), ValidationError, 400, "id"),  # type: ignore[arg-type]
    ("ack_batch not a list", lambda a: a.ack_batch("x"), ValidationError, 400, "items"),  # type: ignore[arg-type]
    ("dlq limit zero", lambda a: a.dlq("q", limit=0), ValidationError, 400, "limit"),
    ("pause bad queue", lambda a: a.pause("a/b"), ValidationError, 400, "queue"),
    ("body names another queue", lambda a: a.push_job("q", {"name": "j", "queue": "r"}), ValidationError, 400, "queue"),
    ("spec names another queue", lambda a: a.push_job("q", JobSpec(name="j", queue="r")), ValidationError, 400, "queue"),
    ("batch item bad queue", lambda a: a.push_batch("q", [{"name": "j", "queue": "a b"}]), ValidationError, 400, "jobs[0].queue"),
    ("batch item name too long", lambda a: a.push_batch("q", [{"name": "j"}, {"name": "n" * 1025}]), LimitExceededError, 413, "jobs[1].name"),
    ("batch item data not JSON", lambda a: a.push_batch("q", [{"name": "j", "data": {1j}}]), ValidationError, 400, "jobs[0].data"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "call", "error", "status", "field"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_refused_and_nothing_is_stored(
    app: Conveyor, what: str, call: Call, error: type[ConveyorError], status: int, field: str
) -> None:
    with pytest.raises(error) as caught:
        await call(app)
    exc = caught.value
    assert type(exc) is error, f"{what}: got {type(exc).__name__}"
    assert exc.code == "VALIDATION_ERROR" and exc.http_status == status
    assert exc.details.get("field") == field, exc.details
    assert field in exc.message, exc.message
    assert exc.to_wire() == {"code": "VALIDATION_ERROR", "message": exc.message, "details": exc.details}
    assert await app.queues() == []


@pytest.mark.parametrize("storage_url", ["sqlite-memory"], indirect=True)
async def test_nothing_stored_after_a_refused_batch_among_good_ones(app: Conveyor) -> None:
    await app.push("q", "good")
    with pytest.raises(ValidationError):
        await app.push_batch("q", [{"name": "ok"}] * 10 + [{"name": ""}])
    assert (await app.stats("q")).waiting == 1
