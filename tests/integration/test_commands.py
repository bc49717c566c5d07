"""The command layer's flow commands answer in the wire shapes of DESIGN.md §5."""

from __future__ import annotations

import json

import pytest

from conveyor import Conveyor, ValidationError, commands

pytestmark = pytest.mark.anyio


async def test_flow_commands_round_trip_through_json(app: Conveyor) -> None:
    body = json.loads(
        '{"flow_id": "wf-9", "steps": [{"key": "a", "queue": "q", "name": "a"},'
        ' {"key": "b", "queue": "q", "name": "b", "needs": ["a"], "metadata": {"step": "b"}}]}'
    )
    submitted = await commands.submit_flow(app, body)
    assert submitted["ok"] is True and submitted["flow_id"] == "wf-9" and set(submitted["ids"]) == {"a", "b"}
    status = json.loads(json.dumps(await commands.flow_status(app, "wf-9")))
    assert status["ok"] is True and status["flow_id"] == "wf-9"
    assert status["summary"] == {
        "total": 2, "waiting": 1, "active": 0, "delayed": 0, "blocked": 1, "completed": 0, "failed": 0, "dlq": 0, "cancelled": 0,
    }  # fmt: skip
    jobs = {job["name"]: job for job in status["jobs"]}
    assert jobs["b"]["depends_on"] == [submitted["ids"]["a"]] and jobs["b"]["metadata"] == {"step": "b"}
    assert "metadata" not in jobs["a"]


async def test_flow_commands_raise_wire_errors(app: Conveyor) -> None:
    with pytest.raises(ValidationError) as err:
        await commands.submit_flow(app, {"steps": "nope"})
    assert err.value.to_wire()["code"] == "VALIDATION_ERROR" and err.value.field == "steps"
    with pytest.raises(ValidationError):
        await commands.flow_status(app, 42)
