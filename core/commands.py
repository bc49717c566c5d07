"""The protocol-neutral command layer: parameters -> `Conveyor` call -> wire response.

Every protocol front end runs commands through `execute`: the TCP server passes the command
object minus ``cmd``; HTTP routes pass path, query and body merged. So both protocols accept
the same parameters, refuse the same input with the same error, and answer the same shapes.
Failures are raised as `ConveyorError`; each protocol renders its envelope
``{"ok": false, "error": {"code", "message", "details"}}``. A reply holds JSON values,
UUIDs (new job ids), models and `wire.JsonText` (pulled jobs, rendered by the storage);
`wire.encode` turns it into the bytes both protocols send.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from . import _limits as limits
from . import wire
from .errors import JobNotFoundError, UnknownCommandError, ValidationError
from .models import OPTION_FIELDS

if TYPE_CHECKING:
    from .app import Conveyor

Params = dict[str, Any]
Reply = dict[str, Any]
Handler = Callable[["Conveyor", Params], Awaitable[Reply]]
OK: Reply = {"ok": True}


@dataclass(frozen=True)
class Command:
    """One command: its name (the TCP ``cmd``), parameter and response models, and handler."""

    name: str
    params: type[BaseModel]
    response: type[BaseModel]
    run: Handler
    doc: str
    allowed: frozenset[str] = field(default_factory=frozenset)
    required: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {}


def _command(
    name: str,
    params: type[BaseModel],
    response: type[BaseModel],
    *,
    extra: frozenset[str] = frozenset(),
    also_required: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        fields = params.model_fields
        COMMANDS[name] = Command(
            name, params, response, fn, inspect.getdoc(fn) or "",
            allowed=frozenset(fields) | extra,
            required=tuple(key for key, info in fields.items() if info.is_required()) + also_required,
        )  # fmt: skip
        return fn

    return register


async def execute(app: Conveyor, name: str, params: Any) -> Reply:
    """Run command ``name`` with ``params``; raises `UnknownCommandError` for an unknown name
    and `ValidationError` for an unknown or missing parameter, before anything runs."""
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        shown = limits.printable(str(name)[:64])
        raise UnknownCommandError(
            f"unknown command {shown!r}; known: {', '.join(sorted(COMMANDS))}", details={"cmd": shown}
        )
    if not isinstance(params, dict):
        raise ValidationError(f"{name}: parameters must be a JSON object, got {type(params).__name__}")
    if unknown := params.keys() - command.allowed:
        names = sorted(limits.printable(str(key)) for key in unknown)
        raise ValidationError(f"{names[0]}: unknown field", field=names[0], details={"unknown": names})
    for key in command.required:
        if key not in params:
            raise ValidationError(f"{key}: Field required", field=key)
    started = time.perf_counter()
    try:
        return await command.run(app, params)
    finally:
        app.metrics.observe("operation_duration_seconds", time.perf_counter() - started, name)


# -- jobs -------------------------------------------------------------------------------------


@_command("push", wire.PushParams, wire.PushResponse, extra=OPTION_FIELDS, also_required=("queue",))
async def push(app: Conveyor, params: Params) -> Reply:
    """Enqueue one job; options nested under ``options`` or flat."""
    return {"ok": True, "id": await app.push_job(params["queue"], params)}  # wire.encode writes UUIDs


@_command("push_batch", wire.PushBatchParams, wire.PushBatchResponse)
async def push_batch(app: Conveyor, params: Params) -> Reply:
    """Enqueue every job or none; errors name the item (``jobs[3].options.priority``)."""
    return {"ok": True, "ids": await app.push_batch(params["queue"], params["jobs"])}


@_command("pull", wire.PullParams, wire.PullResponse)
async def pull(app: Conveyor, params: Params) -> Reply:
    """Claim up to ``count`` jobs (highest priority, then oldest); ``wait_ms`` long-polls."""
    count = params.get("count")
    jobs = await app.pull_json(
        params["queue"], 1 if count is None else count,
        worker_id=params.get("worker_id"), wait_ms=params.get("wait_ms", 0),
    )  # fmt: skip
    return pull_reply(count, jobs)


def pull_reply(count: Any, jobs: list[str]) -> Reply:
    """A pull's answer: ``job`` (or null) without a count or with 1, else ``jobs``."""
    if count is None or count == 1:
        return {"ok": True, "job": wire.JsonText(jobs[0]) if jobs else None}
    return {"ok": True, "jobs": wire.JsonText(f"[{','.join(jobs)}]")}


@_command("ack", wire.AckParams, wire.Ok)
async def ack(app: Conveyor, params: Params) -> Reply:
    """Complete an active job with ``result``; releases dependents and pushes follow-ups."""
    await app.ack(params["id"], params.get("result"), worker_id=params.get("worker_id"))
    return OK


@_command("ack_batch", wire.AckBatchParams, wire.AckBatchResponse)
async def ack_batch(app: Conveyor, params: Params) -> Reply:
    """Ack many jobs in one transaction; one result per item, in order."""
    results, acked = await app.ack_batch_json(params["items"], worker_id=params.get("worker_id"))
    return {
        "ok": True,
        "acked": acked,
        "failed": len(results) - acked,
        "results": wire.JsonText(f"[{','.join(results)}]"),
    }


@_command("fail", wire.FailParams, wire.FailResponse)
async def fail(app: Conveyor, params: Params) -> Reply:
    """Record a failed attempt: retry after backoff while attempts remain, else dead-letter."""
    outcome = await app.fail(params["id"], params.get("error", "unknown error"), worker_id=params.get("worker_id"))
    return {"ok": True, **outcome.model_dump(mode="json", exclude={"id"})}


@_command("cancel", wire.JobIdParams, wire.Ok)
async def cancel(app: Conveyor, params: Params) -> Reply:
    """Cancel a waiting, delayed or blocked job (its blocked dependents go to the DLQ)."""
    await app.cancel(params["id"])
    return OK


@_command("progress", wire.ProgressParams, wire.Ok)
async def progress(app: Conveyor, params: Params) -> Reply:
    """Report progress (clamped to 0-100); ``message`` is appended to the job's logs."""
    await app.progress(params["id"], params["progress"], params.get("message"), worker_id=params.get("worker_id"))
    return OK


@_command("heartbeat", wire.HeartbeatParams, wire.Ok)
async def heartbeat(app: Conveyor, params: Params) -> Reply:
    """Extend an active job's lease so stall detection leaves it alone."""
    await app.heartbeat(params["id"], worker_id=params.get("worker_id"))
    return OK


@_command("release", wire.ReleaseParams, wire.Ok)
async def release(app: Conveyor, params: Params) -> Reply:
    """Give an active job back unrun: waiting again at once, the attempt not counted."""
    await app.release(params["id"], worker_id=params.get("worker_id"))
    return OK


@_command("get", wire.JobIdParams, wire.JobResponse)
async def get(app: Conveyor, params: Params) -> Reply:
    """The whole job: data, metadata, result, state, progress, logs, attempts."""
    job = await app.get(params["id"])
    if job is None:
        raise JobNotFoundError(f"job {params['id']} not found", details={"id": str(params["id"])})
    return {"ok": True, "job": job}


# -- queues -------------------------------------------------------------------------------------


@_command("stats", wire.QueueParams, wire.StatsResponse)
async def stats(app: Conveyor, params: Params) -> Reply:
    """Counts by state for one queue (all zero for an unknown queue)."""
    counts = await app.stats(params["queue"])
    return {"ok": True, "queue": params["queue"], "counts": counts.model_dump()}


@_command("queues", wire.NoParams, wire.QueuesResponse)
async def queues(app: Conveyor, params: Params) -> Reply:
    """Every queue that has jobs or a pause flag, with counts."""
    return {"ok": True, "queues": [info.model_dump() for info in await app.queues()]}


@_command("queue_pause", wire.QueueParams, wire.Ok)
async def queue_pause(app: Conveyor, params: Params) -> Reply:
    """Stop delivering and accepting jobs for the queue (persisted, every node)."""
    await app.pause(params["queue"])
    return OK


@_command("queue_resume", wire.QueueParams, wire.Ok)
async def queue_resume(app: Conveyor, params: Params) -> Reply:
    """Deliver and accept jobs for the queue again."""
    await app.resume(params["queue"])
    return OK


@_command("dlq", wire.DlqParams, wire.JobsResponse)
async def dlq(app: Conveyor, params: Params) -> Reply:
    """Dead-lettered jobs of the queue, most recent first."""
    jobs = await app.dlq(params["queue"], params.get("limit", 100), params.get("offset", 0))
    return {"ok": True, "jobs": jobs}


# -- flows --------------------------------------------------------------------------------------


@_command("submit_flow", wire.SubmitFlowParams, wire.FlowSubmittedResponse)
async def submit_flow(app: Conveyor, params: Params) -> Reply:
    """Create a whole dependency graph atomically; steps refer to each other by ``key``."""
    submitted = await app.submit_flow(params)
    return {"ok": True, "flow_id": submitted.flow_id, "ids": {k: str(v) for k, v in submitted.ids.items()}}


@_command("flow", wire.FlowParams, wire.FlowStatusResponse)
async def flow(app: Conveyor, params: Params) -> Reply:
    """Every job of a flow (oldest first) and counts by state."""
    status = await app.flow(params["flow_id"])
    return {
        "ok": True,
        "flow_id": status.flow_id,
        "jobs": status.jobs,
        "summary": status.summary.model_dump(),
    }


# -- webhooks -----------------------------------------------------------------------------------


@_command("webhook_create", wire.WebhookCreateParams, wire.WebhookCreatedResponse)
async def webhook_create(app: Conveyor, params: Params) -> Reply:
    """Register a receiver for lifecycle events; stored, so it survives restarts."""
    webhook = await app.add_webhook(params)
    return {"ok": True, "id": str(webhook.id), "webhook": webhook.to_wire()}


@_command("webhook_list", wire.NoParams, wire.WebhooksResponse)
async def webhook_list(app: Conveyor, params: Params) -> Reply:
    """Every registration, oldest first (secrets are never returned)."""
    return {"ok": True, "webhooks": [webhook.to_wire() for webhook in await app.webhooks()]}


@_command("webhook_get", wire.WebhookIdParams, wire.WebhookResponse)
async def webhook_get(app: Conveyor, params: Params) -> Reply:
    """One registration by id."""
    return {"ok": True, "webhook": (await app.get_webhook(params["id"])).to_wire()}


@_command("webhook_delete", wire.WebhookIdParams, wire.Ok)
async def webhook_delete(app: Conveyor, params: Params) -> Reply:
    """Remove a registration; deliveries already under way finish."""
    await app.remove_webhook(params["id"])
    return OK


# -- schedules ------------------------------------------------------------------------------------


@_command("schedule_create", wire.ScheduleCreateParams, wire.ScheduleResponse)
async def schedule_create(app: Conveyor, params: Params) -> Reply:
    """Create a schedule: a job pushed on a cron expression or every ``every_ms`` (stored, so it
    survives restarts; every node shares it and each due time fires once)."""
    return {"ok": True, "schedule": await app.add_schedule(params)}


@_command("schedule_list", wire.NoParams, wire.SchedulesResponse)
async def schedule_list(app: Conveyor, params: Params) -> Reply:
    """Every schedule, by name."""
    return {"ok": True, "schedules": await app.schedules()}


@_command("schedule_get", wire.ScheduleNameParams, wire.ScheduleResponse)
async def schedule_get(app: Conveyor, params: Params) -> Reply:
    """One schedule by name: its definition, firings so far and next due time."""
    return {"ok": True, "schedule": await app.get_schedule(params["name"])}


@_command("schedule_delete", wire.ScheduleNameParams, wire.Ok)
async def schedule_delete(app: Conveyor, params: Params) -> Reply:
    """Remove a schedule; jobs it already pushed stay."""
    await app.remove_schedule(params["name"])
    return OK


@_command("schedule_pause", wire.ScheduleNameParams, wire.Ok)
async def schedule_pause(app: Conveyor, params: Params) -> Reply:
    """Stop firing (persisted, every node)."""
    await app.pause_schedule(params["name"])
    return OK


@_command("schedule_resume", wire.ScheduleNameParams, wire.Ok)
async def schedule_resume(app: Conveyor, params: Params) -> Reply:
    """Fire again; a due time passed while paused fires once."""
    await app.resume_schedule(params["name"])
    return OK
