"""Wire shapes of every command: its parameters and its success response.

The parameter models name what each command accepts (an unknown name is refused before
anything runs) and document both protocols; the response models document what comes back.
Handlers build plain dicts (of JSON values, UUIDs, models and `JsonText`) on the hot path; a test checks
each response validates against its model, so the documentation cannot drift from what is sent.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic_core import to_json

from .models import AckResult, EventName, FlowStep, FlowSummary, Job, JobSpec, JobState, QueueCounts, QueueInfo
from .schedules import Schedule, ScheduleSpec
from .webhooks import WebhookSpec


class JsonText(str):
    """A reply value already serialized as JSON (the jobs of `Conveyor.pull_json`): `encode`
    writes it as it is, where it writes any other string as a JSON string."""

    __slots__ = ()


def loads(raw: bytes) -> Any:
    """A request's JSON as both protocols read it. UTF-8 only, decoded strictly first:
    ``json.loads`` of bytes would guess UTF-16 or 32 and let a BOM and UTF-8-encoded surrogates
    through. NaN and Infinity are refused (they are not JSON). Raises ``ValueError`` naming the
    problem, "nested too deeply" for a document deeper than the parser's recursion limit."""
    try:
        return json.loads(raw.decode(), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def encode(reply: dict[str, Any]) -> bytes:
    """A reply as compact UTF-8 JSON, the bytes both protocols send. Replies hold JSON values,
    UUIDs, models (serialized here in one pass, not first copied into a dict; a UUID costs a
    fifth of ``str(uuid)`` here) and, as top-level values, `JsonText`."""
    if not any(type(value) is JsonText for value in reply.values()):
        return to_json(reply)
    members = [
        to_json(key) + b":" + (_one_line(value) if type(value) is JsonText else to_json(value))
        for key, value in reply.items()
    ]
    return b"{" + b",".join(members) + b"}"


def _one_line(text: JsonText) -> bytes:
    """The text as it is, unless a line break in it (stored JSON written by something other
    than the kernel, which writes it compact) would split a TCP reply: then re-serialized."""
    if "\n" in text or "\r" in text:
        return to_json(json.loads(text))
    return text.encode()


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Worker(_Params):
    worker_id: str | None = Field(None, description="Refuse if another worker now holds the job.")


# -- parameters (TCP: the command object minus ``cmd``; HTTP: path + query + body) --------------


class PushParams(JobSpec):
    """One job; options nested under ``options`` or flat beside ``name``/``data``."""


class PushBatchParams(_Params):
    queue: str
    jobs: list[JobSpec] = Field(description="All pushed or none; a job may name its own queue.")


class PullParams(_Worker):
    queue: str
    count: int | None = Field(None, description="1 (default): answer `job`; more: answer `jobs`.")
    wait_ms: int = Field(0, description="Long-poll: wait up to this long for a job to arrive.")


class AckBody(_Worker):
    result: JsonValue = None


class AckParams(AckBody):
    id: UUID


class AckBatchItem(_Params):
    id: UUID
    result: JsonValue = None


class AckBatchParams(_Worker):
    items: list[AckBatchItem]


class FailBody(_Worker):
    error: str = Field("unknown error", description="What went wrong (RustQueue's default when missing).")


class FailParams(FailBody):
    id: UUID


class ProgressBody(_Worker):
    progress: float = Field(description="Clamped to 0-100.")
    message: str | None = Field(None, description="Appended to the job's logs.")


class ProgressParams(ProgressBody):
    id: UUID


class HeartbeatBody(_Worker):
    pass


class HeartbeatParams(HeartbeatBody):
    id: UUID


class ReleaseBody(_Worker):
    pass


class ReleaseParams(ReleaseBody):
    id: UUID


class JobIdParams(_Params):
    id: UUID


class QueueParams(_Params):
    queue: str


class NoParams(_Params):
    pass


class DlqParams(_Params):
    queue: str
    limit: int = 100
    offset: int = 0


class FlowParams(_Params):
    flow_id: str


class SubmitFlowParams(_Params):
    flow_id: str | None = None
    steps: list[FlowStep]


class WebhookCreateParams(WebhookSpec):
    """``url`` (http or https), ``events`` (dotted or snake_case names; empty: all), ``queues``
    (empty: all) and an optional ``secret`` for the HMAC-SHA256 signature."""


class WebhookIdParams(_Params):
    id: UUID


class ScheduleCreateParams(ScheduleSpec):
    """RustQueue's fields: ``name``, ``queue``, ``job_name``, ``job_data``, ``job_options``, one
    of ``cron_expr`` and ``every_ms``, ``timezone`` and ``max_executions``."""


class ScheduleNameParams(_Params):
    name: str


# -- responses -----------------------------------------------------------------------------------


class Ok(BaseModel):
    ok: Literal[True] = True


class PushResponse(Ok):
    id: UUID


class PushBatchResponse(Ok):
    ids: list[UUID]


class PullResponse(Ok):
    """``job`` when one job was asked for (no ``count``, or 1), else ``jobs``."""

    job: Job | None = None
    jobs: list[Job] | None = None


class JobResponse(Ok):
    job: Job


class AckBatchResponse(Ok):
    acked: int = Field(description="How many items were acked (RustQueue's clients read these counts).")
    failed: int = Field(description="How many items were refused; their results say why.")
    results: list[AckResult]


class FailResponse(Ok):
    retry: bool
    will_retry: bool
    next_attempt_at: datetime | None
    state: JobState


class StatsResponse(Ok):
    queue: str
    counts: QueueCounts


class QueuesResponse(Ok):
    queues: list[QueueInfo]


class JobsResponse(Ok):
    jobs: list[Job]


class FlowStatusResponse(Ok):
    flow_id: str
    jobs: list[Job]
    summary: FlowSummary


class FlowSubmittedResponse(Ok):
    flow_id: str
    ids: dict[str, UUID]


class WebhookInfo(BaseModel):
    """A registration as the API shows it: the secret never leaves the server."""

    id: UUID
    url: str
    events: list[EventName]
    queues: list[str]
    has_secret: bool
    created_at: datetime


class WebhookResponse(Ok):
    webhook: WebhookInfo


class WebhookCreatedResponse(WebhookResponse):
    id: UUID


class WebhooksResponse(Ok):
    webhooks: list[WebhookInfo]


class ScheduleResponse(Ok):
    schedule: Schedule


class SchedulesResponse(Ok):
    schedules: list[Schedule]


class HealthResponse(Ok):
    status: Literal["ok"] = "ok"
    version: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    ok: Literal[False] = False
    error: ErrorBody
