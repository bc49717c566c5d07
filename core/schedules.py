"""Schedules: a job pushed on a cron expression or every N milliseconds.

The kernel owns them as it owns webhooks: validated once here, stored by `Storage` (so they are
the same over HTTP, TCP and the embedded API, survive restarts and are shared by every node),
fired by the maintenance sweep. Each firing is atomic with the push of its job, and guarded by
the schedule's due time, so a schedule fires once per due time whatever the number of nodes.

Missed firings are not replayed: a schedule that was due several times while no node ran fires
once, then goes on at its next due time after now (an ``every_ms`` schedule keeps its cadence).
A firing whose job cannot be pushed because its ``unique_key`` is still held by a pending job is
skipped and not counted (the previous run has not finished); one whose queue is paused waits
until the queue is resumed. Cron times are local wall-clock times in the schedule's time zone:
on the night the clocks go back, a time that occurs twice fires once (the first time); on the
night they go forward, the times in the gap fire once, as the gap ends.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterError, croniter
from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt, StrictStr

from . import _limits as limits
from .errors import ValidationError
from .lifecycle import dt_to_ms, ms_to_dt
from .models import JobOptions

MAX_EVERY_MS = 366 * 24 * 3600 * 1000
MAX_CRON_BYTES = 256
MAX_EXECUTIONS = 1_000_000_000
_RANDOM_FIELD = re.compile(r"(^|[\s,/-])[RH](?=$|[\s,/(-])", re.IGNORECASE)
"""croniter's ``R`` (random) and ``H`` (hashed) values: drawn anew at each firing, so refused."""


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
    max_executions: StrictInt | None = Field(
        None, ge=1, le=MAX_EXECUTIONS, description="Pause for good after pushing this many jobs."
    )


class Schedule(BaseModel):
    """A stored schedule and where it stands. ``next_run_at`` is when it fires next (it may be
    in the past while its queue is paused); ``execution_count`` counts the jobs it pushed; one
    that reached ``max_executions`` is paused and cannot be resumed."""

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
        parsed = limits.parse(JobOptions, spec.job_options, "job_options")
        if parsed.depends_on:
            raise ValidationError(
                "job_options.depends_on: a schedule's jobs cannot depend on other jobs", field="job_options.depends_on"
            )
        options = parsed.model_dump(mode="json", exclude_unset=True)
    if spec.cron_expr is not None:
        limits.check_bytes("cron_expr", spec.cron_expr, MAX_CRON_BYTES)
        if _RANDOM_FIELD.search(spec.cron_expr):
            raise ValidationError(
                f"cron_expr {spec.cron_expr[:64]!r}: random (R) and hashed (H) values are not supported",
                field="cron_expr",
            )
        _zone(spec.timezone)
    elif spec.timezone is not None:
        raise ValidationError(
            "timezone applies to cron_expr only: an every_ms schedule has no wall clock", field="timezone"
        )
    now = ms_to_dt(now_ms)
    values = spec.model_dump()
    values.update(job_options=options, execution_count=0, paused=False, last_run_at=None, created_at=now,
                  updated_at=now, next_run_at=now)  # fmt: skip
    schedule = Schedule.model_validate(values)
    schedule.next_run_at = ms_to_dt(first_run_ms(schedule, now_ms))
    return schedule


def first_run_ms(schedule: Schedule, now_ms: int) -> int:
    return now_ms if schedule.every_ms is not None else next_run_ms(schedule, now_ms)


def next_run_ms(schedule: Schedule, after_ms: int, due_ms: int | None = None) -> int:
    """The first due time strictly after ``after_ms`` (epoch ms). An ``every_ms`` schedule keeps
    the cadence of its last due time ``due_ms`` (a late sweep does not shift it; times missed
    meanwhile are skipped). A cron expression is matched on local wall-clock times (see the
    module docstring for the nights the clocks change)."""
    if schedule.every_ms is not None:
        every, base = schedule.every_ms, after_ms if due_ms is None else due_ms
        return base + every * ((after_ms - base) // every + 1)
    assert schedule.cron_expr is not None
    zone = _zone(schedule.timezone)
    wall = ms_to_dt(after_ms).astimezone(zone).replace(tzinfo=None)
    try:
        following = _cron(schedule.cron_expr, wall).get_next(datetime)
    except CroniterError:
        raise ValidationError(
            f"cron_expr {schedule.cron_expr[:64]!r} never matches a date", field="cron_expr"
        ) from None
    # fold=0: a wall time that occurs twice is the first one
    at = following.replace(tzinfo=zone)
    if at.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == following:
        return dt_to_ms(at)
    return _gap_end(following, zone)


def _gap_end(wall: datetime, zone: tzinfo) -> int:
    """The instant a gap in ``zone``'s wall clock (the clocks go forward) ends, for a ``wall``
    time inside it: the first instant whose wall time is ``wall`` or later. It lies between
    ``wall`` read with the offset after the gap and with the offset before it."""
    low = dt_to_ms(wall.replace(tzinfo=zone, fold=1))
    high = dt_to_ms(wall.replace(tzinfo=zone, fold=0))
    if low > high:
        low, high = high, low
    while high - low > 1_000:  # transitions fall on whole seconds
        middle = (low + high) // 2
        if ms_to_dt(middle).astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high - high % 1_000


_JOB_FIELDS = {"name": "job_name", "data": "job_data", "options": "job_options"}


def job_error(exc: ValidationError) -> ValidationError:
    """An error in a schedule's job body (``options.priority``), named by the schedule's field
    (``job_options.priority``), in its message, ``field`` and each of pydantic's ``errors``."""
    field = exc.field or ""
    renamed = _job_field(field)
    if renamed is None:
        return exc
    message = renamed + exc.message[len(field) :] if exc.message.startswith(field) else exc.message
    details = {**exc.details, "field": renamed}
    if isinstance(errors := details.get("errors"), list):
        details["errors"] = [
            {**error, "field": _job_field(error["field"]) or error["field"]}
            if isinstance(error, dict) and isinstance(error.get("field"), str)
            else error
            for error in errors
        ]
    return type(exc)(message, field=renamed, details=details)


def _job_field(field: str) -> str | None:
    """``options.priority`` -> ``job_options.priority``; None for a field outside the job body."""
    head, dot, rest = field.partition(".")
    return _JOB_FIELDS[head] + dot + rest if head in _JOB_FIELDS else None


def _cron(expr: str, start: datetime) -> croniter:
    fields = len(expr.split())
    if fields not in (5, 6):
        raise ValidationError(
            f"cron_expr {expr[:64]!r} has {fields} fields: give 5 (minute hour day month weekday) or 6 (second first)",
            field="cron_expr",
        )
    try:
        return croniter(expr, start, second_at_beginning=fields == 6)
    except (ValueError, KeyError) as exc:
        raise ValidationError(
            f"cron_expr {expr[:64]!r} is not a valid cron expression: {exc}", field="cron_expr"
        ) from None


def _zone(name: str | None) -> tzinfo:
    if name is None:
        return UTC
    if name not in _known_zones():
        raise ValidationError(f"timezone {name[:64]!r} is not a known IANA time zone", field="timezone")
    return ZoneInfo(name)


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    """IANA zone names (the tz database's, not host files such as ``localtime``)."""
    host_files = {"localtime", "posixrules", "Factory"}
    return frozenset(n for n in available_timezones() if n not in host_files and not n.startswith(("posix/", "right/")))
