"""The protocol-neutral command layer: wire request body -> `Conveyor` call -> wire response.

HTTP routes and TCP commands call these functions, so both protocols give the same answers;
errors are raised as `ConveyorError`, which each protocol renders as its error envelope
``{"ok": false, "error": {"code", "message", "details"}}``. Flows are the first commands here
(``POST /api/v1/flows``, ``GET /api/v1/flows/{flow_id}``); the server issue adds the rest.
"""

from __future__ import annotations

from typing import Any

from .app import Conveyor


async def submit_flow(app: Conveyor, body: Any) -> dict[str, Any]:
    """``POST /api/v1/flows`` / TCP ``submit_flow``: body is a `FlowSpec` object."""
    submitted = await app.submit_flow(body)
    return {
        "ok": True,
        "flow_id": submitted.flow_id,
        "ids": {key: str(job_id) for key, job_id in submitted.ids.items()},
    }


async def flow_status(app: Conveyor, flow_id: Any) -> dict[str, Any]:
    """``GET /api/v1/flows/{flow_id}`` / TCP ``flow``: every job and counts by state."""
    status = await app.flow(flow_id)
    return {
        "ok": True,
        "flow_id": status.flow_id,
        "jobs": [job.to_wire() for job in status.jobs],
        "summary": status.summary.model_dump(),
    }
