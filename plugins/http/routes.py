"""The REST routes of DESIGN §5 under ``/api/v1``. Each one maps path, query and body onto a
kernel command (`conveyor.commands`), which is what the TCP server runs too."""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, get_args

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response
from starlette.routing import request_response

from conveyor import __version__, commands, wire
from conveyor.errors import ValidationError
from conveyor.models import FlowSpec, JobSpec

from ._body import read_json


class CommandRoute(APIRoute):
    """Documented by FastAPI like any route (OpenAPI comes from the endpoint's signature), but
    run without FastAPI's per-request dependency solving and validation, which cost more than
    the queue operation itself: the endpoint gets the request, path parameters as strings and
    query parameters converted here, and the command layer validates everything else, so
    errors read the same over HTTP and TCP."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # Starlette's request/response wrapper: FastAPI's adds two exit stacks per request,
        # which only dependencies with ``yield`` need, and these routes have none.
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        queries = [(param.name, _converter(param.field_info.annotation)) for param in self.dependant.query_params]

        async def handle(request: Request) -> Response:
            values: dict[str, Any] = dict(request.path_params)
            if queries:
                given = request.query_params
                for name, convert in queries:
                    if (raw := given.get(name)) is not None:
                        values[name] = convert(name, raw)
            response: Response = await endpoint(request, **values)
            return response

        return handle


def _converter(annotation: Any) -> Callable[[str, str], Any]:
    if annotation is int or int in get_args(annotation):
        return _integer
    if annotation is str or str in get_args(annotation):
        return lambda name, raw: raw
    raise TypeError(f"query parameters are int or str here, not {annotation!r}")


def _integer(name: str, raw: str) -> int:
    """Decimal digits, optionally signed: not what else ``int()`` takes (``1_0``, `` 3``, ``٣``)."""
    if not _DECIMAL.fullmatch(raw):
        raise ValidationError(f"{name} must be an integer, got {raw[:64]!r}", field=name)
    return int(raw)


_DECIMAL = re.compile(r"-?[0-9]{1,18}")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": wire.ErrorResponse, "description": description}
    for status, description in {
        400: "VALIDATION_ERROR: bad input; `details.field` names it",
        401: "UNAUTHORIZED: missing or wrong bearer token",
        404: "JOB_NOT_FOUND, WEBHOOK_NOT_FOUND, SCHEDULE_NOT_FOUND (or NOT_FOUND for an unknown route)",
        409: "INVALID_STATE or DUPLICATE_KEY",
        413: "VALIDATION_ERROR: a size limit (body, data, metadata, names) was exceeded",
        415: "VALIDATION_ERROR: the body is not sent as application/json",
        503: "QUEUE_PAUSED",
        500: "INTERNAL_ERROR",
    }.items()
}


router = APIRouter(prefix="/api/v1", route_class=CommandRoute, responses=ERROR_RESPONSES)
public_router = APIRouter(route_class=CommandRoute, responses=ERROR_RESPONSES)

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


async def _run(request: Request, name: str, params: dict[str, Any], status: int = 200) -> Response:
    reply = await commands.execute(request.app.state.conveyor, name, params)
    return Response(wire.encode(reply), status_code=status, media_type="application/json")


async def _body_of(request: Request) -> Any:
    return await read_json(request, request.app.state.max_request_bytes)


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
async def push(request: Request, queue: str) -> Response:
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
    count: Annotated[int | None, Query(description="Without it or with 1: answer `job`; otherwise `jobs`.")] = None,
    wait_ms: Annotated[int | None, Query(description="Long-poll: wait up to this long (ms) for a job.")] = None,
    worker_id: Annotated[str | None, Query(description="Who holds the claimed jobs.")] = None,
) -> Response:
    params = _query(queue=queue, count=count, wait_ms=wait_ms, worker_id=worker_id)
    if not wait_ms:
        return await _run(request, "pull", params)
    # A long-poll ends, with nothing pulled, if its client disconnects: no job is claimed for
    # a client that has left (it would wait out the stall timeout and lose an attempt).
    outcome: list[Response | Exception] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                outcome.append(await _run(request, "pull", params))
            except Exception as exc:  # noqa: BLE001 - raised below, outside the task group
                outcome.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        while (await request.receive())["type"] != "http.disconnect":
            pass  # the (empty) body of the GET; then the wait for a disconnect
        tg.cancel_scope.cancel()
    if not outcome:
        return Response(status_code=499)  # the client is gone: no one reads this
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


@router.post(
    "/jobs/ack-batch", response_model=wire.AckBatchResponse, summary="Ack many jobs; a result per item",
    openapi_extra=_body(wire.AckBatchItem, array=True, single=False),
)  # fmt: skip
async def ack_batch(request: Request) -> Response:
    body = await _body_of(request)
    return await _run(request, "ack_batch", {"items": body} if isinstance(body, list) else _merge(body))


@router.get("/jobs/{job_id}", response_model=wire.JobResponse, summary="Get a job")
async def get_job(request: Request, job_id: str) -> Response:
    return await _run(request, "get", {"id": job_id})


@router.post(
    "/jobs/{job_id}/ack", response_model=wire.Ok, summary="Complete an active job",
    openapi_extra=_body(wire.AckBody, required=False),
)  # fmt: skip
async def ack(request: Request, job_id: str) -> Response:
    return await _run(request, "ack", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/fail", response_model=wire.FailResponse, summary="Fail an attempt: retry or dead-letter",
    openapi_extra=_body(wire.FailBody),
)  # fmt: skip
async def fail(request: Request, job_id: str) -> Response:
    return await _run(request, "fail", _merge(await _body_of(request), id=job_id))


@router.post("/jobs/{job_id}/cancel", response_model=wire.Ok, summary="Cancel a job that has not started")
async def cancel(request: Request, job_id: str) -> Response:
    return await _run(request, "cancel", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/progress", response_model=wire.Ok, summary="Report progress (0-100) and a log message",
    openapi_extra=_body(wire.ProgressBody),
)  # fmt: skip
async def progress(request: Request, job_id: str) -> Response:
    return await _run(request, "progress", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/heartbeat", response_model=wire.Ok, summary="Extend an active job's lease",
    openapi_extra=_body(wire.HeartbeatBody, required=False),
)  # fmt: skip
async def heartbeat(request: Request, job_id: str) -> Response:
    return await _run(request, "heartbeat", _merge(await _body_of(request), id=job_id))


@router.post(
    "/jobs/{job_id}/release", response_model=wire.Ok, summary="Give an active job back unrun (worker shutdown)",
    openapi_extra=_body(wire.ReleaseBody, required=False),
)  # fmt: skip
async def release(request: Request, job_id: str) -> Response:
    return await _run(request, "release", _merge(await _body_of(request), id=job_id))


# -- queues -------------------------------------------------------------------------------------


@router.get("/queues", response_model=wire.QueuesResponse, summary="List queues with counts")
async def list_queues(request: Request) -> Response:
    return await _run(request, "queues", {})


@router.get("/queues/{queue}/stats", response_model=wire.StatsResponse, summary="Counts by state for a queue")
async def stats(request: Request, queue: str) -> Response:
    return await _run(request, "stats", {"queue": queue})


@router.post("/queues/{queue}/pause", response_model=wire.Ok, summary="Pause a queue (persisted)")
async def pause(request: Request, queue: str) -> Response:
    return await _run(request, "queue_pause", {"queue": queue})


@router.post("/queues/{queue}/resume", response_model=wire.Ok, summary="Resume a paused queue")
async def resume(request: Request, queue: str) -> Response:
    return await _run(request, "queue_resume", {"queue": queue})


@router.get("/queues/{queue}/dlq", response_model=wire.JobsResponse, summary="Dead-lettered jobs, newest first")
async def dlq(
    request: Request,
    queue: str,
    limit: Annotated[int | None, Query(description="At most this many (default 100, at most 1000).")] = None,
    offset: Annotated[int | None, Query(description="Skip this many.")] = None,
) -> Response:
    return await _run(request, "dlq", _query(queue=queue, limit=limit, offset=offset))


# -- flows --------------------------------------------------------------------------------------


@router.post(
    "/flows", status_code=201, response_model=wire.FlowSubmittedResponse,
    summary="Submit a whole dependency graph atomically", openapi_extra=_body(FlowSpec),
)  # fmt: skip
async def submit_flow(request: Request) -> Response:
    body = await _body_of(request)
    if body is None:
        raise ValidationError("request body is required: a flow object with steps", field="body")
    return await _run(request, "submit_flow", _merge(body), 201)


@router.get("/flows/{flow_id:path}", response_model=wire.FlowStatusResponse, summary="A flow's jobs and counts")
async def flow_status(request: Request, flow_id: str) -> Response:
    return await _run(request, "flow", {"flow_id": flow_id})


# -- webhooks -----------------------------------------------------------------------------------


@router.post(
    "/webhooks", status_code=201, response_model=wire.WebhookCreatedResponse,
    summary="Register a webhook (events and queues filter; secret signs the payload)",
    openapi_extra=_body(wire.WebhookCreateParams),
)  # fmt: skip
async def create_webhook(request: Request) -> Response:
    body = await _body_of(request)
    if body is None:
        raise ValidationError("request body is required: {url, events, queues, secret}", field="body")
    return await _run(request, "webhook_create", _merge(body), 201)


@router.get("/webhooks", response_model=wire.WebhooksResponse, summary="List webhooks (secrets are never returned)")
async def list_webhooks(request: Request) -> Response:
    return await _run(request, "webhook_list", {})


@router.get("/webhooks/{webhook_id}", response_model=wire.WebhookResponse, summary="Get a webhook")
async def get_webhook(request: Request, webhook_id: str) -> Response:
    return await _run(request, "webhook_get", {"id": webhook_id})


@router.delete("/webhooks/{webhook_id}", response_model=wire.Ok, summary="Delete a webhook")
async def delete_webhook(request: Request, webhook_id: str) -> Response:
    return await _run(request, "webhook_delete", {"id": webhook_id})


# -- schedules ----------------------------------------------------------------------------------


@router.post(
    "/schedules", status_code=201, response_model=wire.ScheduleResponse,
    summary="Create a schedule (a job pushed on a cron expression or every N ms)",
    openapi_extra=_body(wire.ScheduleCreateParams),
)  # fmt: skip
async def create_schedule(request: Request) -> Response:
    body = await _body_of(request)
    if body is None:
        raise ValidationError("request body is required: {name, queue, job_name, cron_expr or every_ms}", field="body")
    return await _run(request, "schedule_create", _merge(body), 201)


@router.get("/schedules", response_model=wire.SchedulesResponse, summary="List schedules")
async def list_schedules(request: Request) -> Response:
    return await _run(request, "schedule_list", {})


@router.get("/schedules/{name}", response_model=wire.ScheduleResponse, summary="Get a schedule")
async def get_schedule(request: Request, name: str) -> Response:
    return await _run(request, "schedule_get", {"name": name})


@router.delete("/schedules/{name}", response_model=wire.Ok, summary="Delete a schedule")
async def delete_schedule(request: Request, name: str) -> Response:
    return await _run(request, "schedule_delete", {"name": name})


@router.post("/schedules/{name}/pause", response_model=wire.Ok, summary="Pause a schedule")
async def pause_schedule(request: Request, name: str) -> Response:
    return await _run(request, "schedule_pause", {"name": name})


@router.post("/schedules/{name}/resume", response_model=wire.Ok, summary="Resume a schedule")
async def resume_schedule(request: Request, name: str) -> Response:
    return await _run(request, "schedule_resume", {"name": name})


# -- public -------------------------------------------------------------------------------------


@public_router.get("/health", response_model=wire.HealthResponse, summary="Liveness (public)")
@router.get("/health", response_model=wire.HealthResponse, summary="Liveness (public)")
async def health(request: Request) -> Response:
    return JSONResponse({"ok": True, "status": "ok", "version": __version__})


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.openapi())
