"""Pydantic models of the public surface: jobs, their options, queue counts and events.

Input models (`JobOptions`, `JobSpec`) validate types and ranges and refuse unknown fields;
byte-size limits are checked by `conveyor._limits` because they need the serialized size and
answer with HTTP 413 rather than 400.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import Any, Literal, TypeVar
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
)

from ._limits import parse
from .errors import ValidationError

JsonValue = Any

INT32_MAX = 2**31 - 1
DAY_MS = 86_400_000


class JobState(enum.StrEnum):
    """Wire spelling of job states. ``failed`` exists for compatibility; no job rests in it."""

    WAITING = "waiting"
    DELAYED = "delayed"
    BLOCKED = "blocked"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    DLQ = "dlq"
    CANCELLED = "cancelled"


class Backoff(enum.StrEnum):
    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


M = TypeVar("M", bound=BaseModel)


def trusted(cls: type[M], values: dict[str, Any], fields_set: set[str] | None = None) -> M:
    """An instance of ``cls`` from a complete dict of already-valid field values, unvalidated.

    For rows we wrote and values the kernel just checked, on per-job hot paths:
    ``model_construct`` costs ~10-20 µs per object here, this ~1 µs. ``values`` must hold every
    field of ``cls``; ``fields_set`` names those given explicitly (default: all of them)."""
    obj = _new(cls)
    _set_dict(obj, values)
    if fields_set is None:  # a copy of the class's field names: cheaper than a set of the dict
        if (every := _FIELD_NAMES.get(cls)) is None:
            every = _FIELD_NAMES[cls] = set(cls.model_fields)
        fields_set = every.copy()
    _set_fields_set(obj, fields_set)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


_new = object.__new__
# BaseModel's own slots, set through their descriptors: a quarter cheaper than
# ``object.__setattr__`` by name (660 -> 480 ns for a three-field model), on every job.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_FIELD_NAMES: dict[type[BaseModel], set[str]] = {}


def _is_none(value: Any) -> bool:
    return value is None


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobOptions(_Input):
    """Per-job options, accepted nested under ``options`` or flat beside ``name``/``data``."""

    priority: StrictInt = Field(0, ge=-INT32_MAX, le=INT32_MAX, description="Higher runs first.")
    delay_ms: StrictInt = Field(0, ge=0, le=365 * DAY_MS, description="Start delayed.")
    max_attempts: StrictInt = Field(3, ge=1, le=1000)
    backoff: Backoff = Backoff.EXPONENTIAL
    backoff_delay_ms: StrictInt = Field(1000, ge=0, le=DAY_MS)
    ttl_ms: StrictInt | None = Field(None, ge=1, le=365 * DAY_MS)
    timeout_ms: StrictInt | None = Field(None, ge=1, le=DAY_MS)
    unique_key: StrictStr | None = Field(None, min_length=1)
    custom_id: StrictStr | None = Field(None, min_length=1)
    tags: list[StrictStr] = Field(default_factory=list, max_length=64)
    group_id: StrictStr | None = Field(None, min_length=1)
    metadata: JsonValue = None
    depends_on: list[UUID] = Field(default_factory=list, max_length=1000)
    flow_id: StrictStr | None = Field(None, min_length=1)
    lifo: StrictBool = False
    remove_on_complete: StrictBool = False
    remove_on_fail: StrictBool = False


OPTION_FIELDS = frozenset(JobOptions.model_fields)


class JobSpec(_Input):
    """What a push carries: name, data and options (nested, or flat as RustQueue clients send).

    ``queue`` is optional because HTTP takes it from the path; the kernel requires it.
    """

    queue: StrictStr | None = None
    name: StrictStr = Field(min_length=1)
    data: JsonValue = None
    options: JobOptions = Field(default_factory=JobOptions)

    @classmethod
    def parse(cls, value: Any, where: str = "") -> JobSpec:
        """Validate a job body whose options may be flat (RustQueue clients) or nested."""
        if (bare := bare_body(value)) is not None:  # what validation would build, ~10x cheaper
            name, data, queue = bare
            given = set(value)
            given.discard("options")
            return trusted(cls, {"queue": queue, "name": name, "data": data, "options": _no_options()}, given)
        return parse(cls, gather_flat_options(value, where), where)


_BARE_KEYS = frozenset({"queue", "name", "data", "options"})


def bare_body(value: Any) -> tuple[str, Any, str | None] | None:
    """``(name, data, queue)`` of a job body without options (absent or null) that validation
    would accept as it is, the common shape on the wire; None for anything else (which
    `JobSpec.parse` validates). Non-ASCII names are left to validation: it refuses lone
    surrogates. ``data`` is checked when it is serialized."""
    if type(value) is dict and value.keys() <= _BARE_KEYS and value.get("options") is None:
        name, queue = value.get("name"), value.get("queue")
        if type(name) is str and name.isascii() and name and (queue is None or type(queue) is str):
            return name, value.get("data"), queue
    return None


DEFAULT_OPTION_VALUES = JobOptions().__dict__
"""Field values of ``JobOptions()``: options equal to these set nothing (a read-only mapping by convention)."""


def _no_options() -> JobOptions:
    """Default options as ``JobOptions()`` makes them (own lists, nothing set), ~10x cheaper."""
    return trusted(JobOptions, {**DEFAULT_OPTION_VALUES, "tags": [], "depends_on": []}, set())


class FollowUp(_Input):
    """A job to push when the job carrying it (in ``metadata.follow_ups``) is acked.

    Omitted ``data`` becomes the parent's result; omitted ``metadata`` is the parent's minus
    ``follow_ups``; omitted ``flow_id`` is the parent's. The parent's id joins
    ``options.depends_on``. Options as for a push (nested or flat)."""

    queue: StrictStr
    name: StrictStr = Field(min_length=1)
    data: JsonValue = None
    options: JobOptions = Field(default_factory=JobOptions)
    """Includes ``flow_id`` and ``metadata`` (given flat, as the spec's example does)."""


class FlowStep(_Input):
    """One job of a flow submitted at once; ``needs`` names other steps of the same flow by
    ``key`` (their ids do not exist yet). Options as for a push (nested or flat)."""

    key: StrictStr = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
    queue: StrictStr
    name: StrictStr = Field(min_length=1)
    data: JsonValue = None
    needs: list[StrictStr] = Field(default_factory=list)
    options: JobOptions = Field(default_factory=JobOptions)


class FlowSpec(_Input):
    """A whole dependency graph, created all at once or not at all."""

    flow_id: StrictStr | None = Field(None, min_length=1)
    steps: list[FlowStep] = Field(min_length=1)


class FlowSubmitted(BaseModel):
    flow_id: str
    ids: dict[str, UUID]
    """Job id of each step, by step key."""


class LogEntry(BaseModel):
    timestamp: datetime
    message: str


class Job(BaseModel):
    """A job as stored and as sent on the wire. Times are UTC."""

    model_config = ConfigDict(use_enum_values=False)

    id: UUID
    custom_id: str | None = None
    name: str
    queue: str
    data: JsonValue = None
    result: JsonValue = None
    state: JobState
    progress: int = 0
    logs: list[LogEntry] = Field(default_factory=list)
    priority: int = 0
    delay_until: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    max_attempts: int = 3
    attempt: int = 0
    backoff: Backoff = Backoff.EXPONENTIAL
    backoff_delay_ms: int = 1000
    last_error: str | None = None
    ttl_ms: int | None = None
    timeout_ms: int | None = None
    unique_key: str | None = None
    tags: list[str] = Field(default_factory=list)
    group_id: str | None = None
    metadata: JsonValue = Field(None, exclude_if=_is_none)
    """Left out of the serialized job when null (RustQueue compatibility)."""
    depends_on: list[UUID] = Field(default_factory=list)
    flow_id: str | None = None
    lifo: bool = False
    remove_on_complete: bool = False
    remove_on_fail: bool = False
    worker_id: str | None = None
    last_heartbeat: datetime | None = None

    @classmethod
    def trusted(cls, values: dict[str, Any]) -> Job:
        """Build from a complete dict of already-valid field values (see `trusted`)."""
        return trusted(cls, values)

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict, as the protocols send it (``metadata`` omitted when null)."""
        return self.model_dump(mode="json")


class QueueCounts(BaseModel):
    waiting: int = 0
    active: int = 0
    delayed: int = 0
    completed: int = 0
    failed: int = 0
    dlq: int = 0
    blocked: int = 0
    cancelled: int = 0


class QueueInfo(BaseModel):
    name: str
    paused: bool = False
    counts: QueueCounts = Field(default_factory=QueueCounts)


class FlowSummary(QueueCounts):
    """Counts by state of one flow's jobs, and their ``total``."""

    total: int = 0


class FlowStatus(BaseModel):
    """Every job of a flow (oldest first) and how many are in each state."""

    flow_id: str
    jobs: list[Job]
    summary: FlowSummary


class FailOutcome(BaseModel):
    """What `fail` did: retry later (``next_attempt_at``) or dead-lettered."""

    id: UUID
    retry: bool
    will_retry: bool
    next_attempt_at: datetime | None = None
    state: JobState


class AckItem(_Input):
    id: UUID
    result: JsonValue = None


class AckResult(BaseModel):
    """Per-item outcome of a batch ack; ``error`` is the wire envelope when ``ok`` is false.
    ``id`` is the job's id as ``str(UUID)`` writes it when the item's id parses; else the item's
    id as given, as text; None for an item without one."""

    id: str | None
    ok: bool
    error: dict[str, Any] | None = None


EventName = Literal["job.pushed", "job.completed", "job.failed", "job.dlq", "job.cancelled", "job.progress"]
EVENT_NAMES: tuple[str, ...] = EventName.__args__  # type: ignore[attr-defined]


@dataclass(slots=True)
class Event:
    """A lifecycle event handed to event sinks after the change it reports is committed.

    A plain dataclass, not a model: the kernel makes one or two per job, and a model costs
    2.5 times as much to build (bench_instructions.py: 9,500 against 3,800 instructions).
    Events from elsewhere (the shared event log) are validated by `from_wire`."""

    event: EventName
    job_id: UUID
    queue: str
    timestamp: datetime
    data: dict[str, Any] = dataclass_field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "job_id": str(self.job_id),
            "queue": self.queue,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            **({"data": self.data} if self.data else {}),
        }

    @staticmethod
    def from_wire(payload: Any) -> Event:
        """The event `to_wire` wrote; `pydantic.ValidationError` (a ``ValueError``) if it is not one."""
        return _EVENT.validate_python(payload)


_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def normalize_event_name(name: str) -> str:
    """Accept ``job.completed`` and ``job_completed`` alike; raise for unknown names."""
    dotted = name.strip().lower().replace("_", ".", 1) if "." not in name else name.strip().lower()
    if dotted not in EVENT_NAMES:
        raise ValueError(f"unknown event {name!r}; known: {', '.join(EVENT_NAMES)}")
    return dotted


def gather_flat_options(value: Any, where: str = "") -> Any:
    """Move option fields given beside ``name``/``data`` under ``options`` (RustQueue clients
    send them flat); refuse an option given both ways. ``"options": null`` is no options, as
    RustQueue reads it (serde clients send null for an unset option)."""
    if not isinstance(value, dict):
        return value
    flat = {k: v for k, v in value.items() if k in OPTION_FIELDS}
    nested = value.get("options")
    if not flat:
        if nested is None and "options" in value:
            return {k: v for k, v in value.items() if k != "options"}
        return value
    if nested is None:
        nested = {}
    if not isinstance(nested, dict):
        return value  # model validation names `options` as the problem
    if clash := sorted(flat.keys() & nested.keys()):
        field = ".".join(p for p in (where, clash[0]) if p)
        raise ValidationError(f"{field}: option given both flat and under 'options'", field=field)
    rest = {k: v for k, v in value.items() if k not in OPTION_FIELDS}
    return {**rest, "options": {**nested, **flat}}
