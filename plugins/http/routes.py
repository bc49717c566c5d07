"""The REST routes of DESIGN §5 under ``/api/v1``. Each one maps path, query and body onto a
kernel command (`conveyor.commands`), which is what the TCP server runs too."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse

from conveyor import __version__, commands, wire
from conveyor.errors import ValidationError
from conveyor.models import FlowSpec, JobSpec

from ._body import read_json

router = APIRouter(prefix="/api/v1")
public_router = APIRouter()

BODY_SCHEMAS: dict[str, type[BaseModel]] = {}
"""Models documented as request bodies, by component name (added to the OpenAPI document)."""


def _body(model: type[BaseModel], *, array: bool = False, single: bool = True, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that the route reads itself (so that malformed
    JSON, a wrong media type or an oversize body still get the error envelope)."""
    BODY_SCHEMAS[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    choices = ([ref] if single else []) + ([{"type": "array", "items": ref}] if array else [])
    schema = choices[0] if len(choices) == 1 else {"oneOf": choices}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


async def _run(request: Request, name: str, params: dict[str, Any], status: int = 200) -> JSONResponse:
    reply = await commands.execute(request.app.state.conveyor, name, params)
    return JSONResponse(reply, status_code=status)


async def _body_of(request: Request) -> Any:
    return await read_json(request, request.app.state.max_body_bytes)


def _merge(body: Any, **path: Any) -> dict[str, Any]:
    """An object body (or none) with the path parameters; the body may repeat one of them but
    not contradict it."""
    if body is None:
        return dict(path)
    if not isinstance(body, dict):
        raise ValidationError(f"request body must be a JSON object, got {type(body).__name__}", field="body")
    for key, value in path.items():
        if key in body and str(body[key]) != str(value):
            raise ValidationError(
                f"{key}: the body names {str(body[key])[:64]!r} but the path names {str(value)[:64]!r}", field=key
            )
    return {**body, **path}


def _query(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


# -- jobs ---------------------------------------------------------------------------------------


@router.post(
    "/queues/{queue}/jobs", status_code=201, response_model=wire.PushResponse | wire.PushBatchResponse,
    summary="Push one job (object body) or a batch, all or none (array body)",
    openapi_extra=_body(JobSpec, array=True),
)  # fmt: skip
async def push(request: Request, queue: str) -> JSONResponse:
    body = await _body_of(request)
    if isinstance(body, list):
        return await _run(request, "push_batch", {"queue": queue, "jobs": body}, 201)
    if body is None:
        raise ValidationError("request body is required: a job object or an array of them", field="body")
    return await _run(request, "push", _merge(body, queue=queue), 201)


@router.get("/queues/{queue}/jobs", response_model=wire.PullResponse, summary="Pull (claim) jobs")
async def pull(
    request: Request,
    queue: str,
    count: int | None = Query(None, description="Without it or with 1: answer `job`; otherwise `jobs`."),
    wait_ms: int | None = Query(None, description="Long-poll: wait up to this long (ms) for a job."),
    worker_id: str | None = Query(None, description="Who holds the claimed jobs."),
) -> JSONResponse:
    return await _run(request, "pull", _query(queue=queue, count=count, wait_ms=wait_ms, worker_id=worker_id))


@router.post(
    "/jobs/ack-batch", response_model=wire.AckBatchResponse, summary="Ack many jobs; a result per item",
    openapi_extra=_body(wire.AckBatchItem, array=True, single=False),
)  # fmt: skip
async def ack_batch(request: Request) -> JSONResponse:
    body = await _body_of(request)
    return await _run(request, "ack_batch", {"items": body} if isinstance(body, list) else _merge(body))


@router.get("/jobs/{job_id}", response_model=wire.JobResponse, summary="Get a job")
async def get_job(request: Request, job_id: str) -> JSONResponse:
    return await _run(request, "get", {"id": job_id})


@router.post(
    "/jobs/{job_id}/ack", response_model=wire.Ok, summary="Complete an active job",
    openapi_extra=_body(wire.AckBody, required=False),
)  # fmt: skip
async def ack(request: Request, job_id: str) -> JSONResponse:
    return await _run(request, "ack", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/fail", response_model=wire.FailResponse, summary="Fail an attempt: retry or dead-letter",
    openapi_extra=_body(wire.FailBody),
)  # fmt: skip
async def fail(request: Request, job_id: str) -> JSONResponse:
    return await _run(request, "fail", _merge(await _body_of(request), id=job_id))


@router.post("/jobs/{job_id}/cancel", response_model=wire.Ok, summary="Cancel a job that has not started")
async def cancel(request: Request, job_id: str) -> JSONResponse:
    return await _run(request, "cancel", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/progress", response_model=wire.Ok, summary="Report progress (0-100) and a log message",
    openapi_extra=_body(wire.ProgressBody),
)  # fmt: skip
async def progress(request: Request, job_id: str) -> JSONResponse:
    return await _run(request, "progress", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/heartbeat", response_model=wire.Ok, summary="Extend an active job's lease",
    openapi_extra=_body(wire.HeartbeatBody, required=False),
)  # fmt: skip
async def heartbeat(request: Request, job_id: str) -> JSONResponse:
    return await _run(request, "heartbeat", _merge(await _body_of(request), id=job_id))


# -- queues -------------------------------------------------------------------------------------


@router.get("/queues", response_model=wire.QueuesResponse, summary="List queues with counts")
async def list_queues(request: Request) -> JSONResponse:
    return await _run(request, "queues", {})


@router.get("/queues/{queue}/stats", response_model=wire.StatsResponse, summary="Counts by state for a queue")
async def stats(request: Request, queue: str) -> JSONResponse:
    return await _run(request, "stats", {"queue": queue})


@router.post("/queues/{queue}/pause", response_model=wire.Ok, summary="Pause a queue (persisted)")
async def pause(request: Request, queue: str) -> JSONResponse:
    return await _run(request, "queue_pause", {"queue": queue})


@router.post("/queues/{queue}/resume", response_model=wire.Ok, summary="Resume a paused queue")
async def resume(request: Request, queue: str) -> JSONResponse:
    return await _run(request, "queue_resume", {"queue": queue})


@router.get("/queues/{queue}/dlq", response_model=wire.JobsResponse, summary="Dead-lettered jobs, newest first")
async def dlq(
    request: Request,
    queue: str,
    limit: int | None = Query(None, description="At most this many (default 100, at most 1000)."),
    offset: int | None = Query(None, description="Skip this many."),
) -> JSONResponse:
    return await _run(request, "dlq", _query(queue=queue, limit=limit, offset=offset))


# -- flows --------------------------------------------------------------------------------------


@router.post(
    "/flows", status_code=201, response_model=wire.FlowSubmittedResponse,
    summary="Submit a whole dependency graph atomically", openapi_extra=_body(FlowSpec),
)  # fmt: skip
async def submit_flow(request: Request) -> JSONResponse:
    body = await _body_of(request)
    if body is None:
        raise ValidationError("request body is required: a flow object with steps", field="body")
    return await _run(request, "submit_flow", _merge(body), 201)


@router.get("/flows/{flow_id}", response_model=wire.FlowStatusResponse, summary="A flow's jobs and counts")
async def flow_status(request: Request, flow_id: str) -> JSONResponse:
    return await _run(request, "flow", {"flow_id": flow_id})


# -- public -------------------------------------------------------------------------------------


@public_router.get("/health", response_model=wire.HealthResponse, summary="Liveness (public)")
@router.get("/health", response_model=wire.HealthResponse, summary="Liveness (public)")
async def health() -> JSONResponse:
    return JSONResponse({"ok": True, "status": "ok", "version": __version__})


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())
