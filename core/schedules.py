"""Schedules: a job pushed on a cron expression or every N milliseconds.

The kernel owns them as it owns webhooks: validated once here, stored by `Storage` (so they are
the same over HTTP, TCP and the embedded API, survive restarts and are shared by every node),
fired by the maintenance sweep. Each firing is atomic with the push of its job, and guarded by
the schedule's due time, so a schedule fires once per due time whatever the number of nodes.

Missed firings are not replayed: a schedule that was due several times while no node ran fires
once, then its next time is computed from now. A firing whose job cannot be pushed because its
``unique_key`` is still held by a pending job is skipped (the previous run has not finished);
one whose queue is paused waits until the queue is resumed.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, StrictStr

from . import _limits as limits
from .errors import ValidationError
from .lifecycle import ms_to_dt
from .models import JobOptions

MAX_EVERY_MS = 366 * 24 * 3600 * 1000
MAX_CRON_BYTES = 256


class ScheduleSpec(BaseModel):
    """A schedule as created: ``POST /api/v1/schedules``, TCP ``schedule_create`` (RustQueue's
    fields). Exactly one of ``cron_expr`` and ``every_ms``."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(description="Unique; letters, digits and . _ : - (it appears in URLs).")
    queue: StrictStr
    job_name: StrictStr
    job_data: JsonValue = None
    job_options: dict[str, Any] | None = Field(None, description="Options of each pushed job, as `push` takes them.")
    cron_expr: StrictStr | None = Field(
        None, description="5 fields (minute hour day month weekday), or 6 with seconds first."
    )
    every_ms: StrictInt | None = Field(None, ge=1, le=MAX_EVERY_MS, description="Fires at once, then every N ms.")
    timezone: StrictStr | None = Field(None, description="IANA zone the cron expression reads in (default UTC).")
    max_executions: StrictInt | None = Field(None, ge=1, description="Pause after this many firings.")


class Schedule(BaseModel):
    """A stored schedule and where it stands. ``next_run_at`` is when it fires next (it may be
    in the past while its queue is paused); a schedule that reached ``max_executions`` is paused
    and never fires again."""

    name: str
    queue: str
    job_name: str
    job_data: JsonValue = None
    job_options: dict[str, Any] | None = None
    cron_expr: str | None = None
    every_ms: int | None = None
    timezone: str | None = None
    max_executions: int | None = None
    execution_count: int = 0
    paused: bool = False
    last_run_at: datetime | None = None
    next_run_at: datetime
    created_at: datetime
    updated_at: datetime

    @property
    def exhausted(self) -> bool:
        return self.max_executions is not None and self.execution_count >= self.max_executions

    def job_body(self) -> dict[str, Any]:
        """The wire body of the job each firing pushes."""
        body: dict[str, Any] = {"name": self.job_name, "data": self.job_data}
        if self.job_options:
            body["options"] = self.job_options
        return body


def build_schedule(spec: ScheduleSpec | dict[str, Any], now_ms: int) -> Schedule:
    """A new schedule from ``spec``, every field checked (its job is built by the caller to
    check it as a push would); the first firing is due at once for ``every_ms``, at the next
    matching time for ``cron_expr``."""
    spec = limits.parse(ScheduleSpec, spec)
    limits.check_queue_name(spec.name, "name")
    limits.check_queue_name(spec.queue)
    if (spec.cron_expr is None) == (spec.every_ms is None):
        raise ValidationError("give exactly one of cron_expr and every_ms", field="cron_expr")
    options = None
    if spec.job_options is not None:
        options = limits.parse(JobOptions, spec.job_options, "job_options").model_dump(exclude_unset=True)
    if spec.cron_expr is not None:
        limits.check_bytes("cron_expr", spec.cron_expr, MAX_CRON_BYTES)
        _cron(spec.cron_expr, ms_to_dt(now_ms), _zone(spec.timezone))  # refuses a bad expression
    elif spec.timezone is not None:
        _zone(spec.timezone)
    now = ms_to_dt(now_ms)
    values = spec.model_dump()
    values.update(job_options=options, execution_count=0, paused=False, last_run_at=None, created_at=now,
                  updated_at=now, next_run_at=now)  # fmt: skip
    schedule = Schedule.model_validate(values)
    schedule.next_run_at = ms_to_dt(first_run_ms(schedule, now_ms))
    return schedule


def first_run_ms(schedule: Schedule, now_ms: int) -> int:
    return now_ms if schedule.every_ms is not None else next_run_ms(schedule, now_ms)


def next_run_ms(schedule: Schedule, after_ms: int) -> int:
    """The first due time strictly after ``after_ms`` (epoch ms)."""
    if schedule.every_ms is not None:
        return after_ms + schedule.every_ms
    assert schedule.cron_expr is not None
    after = ms_to_dt(after_ms).astimezone(_zone(schedule.timezone))
    following = _cron(schedule.cron_expr, after, after.tzinfo).get_next(datetime)
    return int(following.timestamp() * 1000)


_JOB_FIELDS = {"name": "job_name", "data": "job_data", "options": "job_options"}


def job_error(exc: ValidationError) -> ValidationError:
    """An error in a schedule's job body (``options.priority``), named by the schedule's field
    (``job_options.priority``)."""
    field = exc.field or ""
    head, dot, rest = field.partition(".")
    if head not in _JOB_FIELDS:
        return exc
    renamed = _JOB_FIELDS[head] + dot + rest
    message = renamed + exc.message[len(field) :] if exc.message.startswith(field) else exc.message
    return type(exc)(message, field=renamed, details={**exc.details, "field": renamed})


def _cron(expr: str, start: datetime, zone: tzinfo | None) -> croniter:
    fields = len(expr.split())
    if fields not in (5, 6):
        raise ValidationError(
            f"cron_expr {expr[:64]!r} has {fields} fields: give 5 (minute hour day month weekday) or 6 (second first)",
            field="cron_expr",
        )
    try:
        return croniter(expr, start.astimezone(zone), second_at_beginning=fields == 6)
    except (ValueError, KeyError) as exc:
        raise ValidationError(
            f"cron_expr {expr[:64]!r} is not a valid cron expression: {exc}", field="cron_expr"
        ) from None


def _zone(name: str | None) -> tzinfo:
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"timezone {name[:64]!r} is not a known IANA time zone", field="timezone") from None
