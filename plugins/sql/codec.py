"""Job model <-> table row, in `COLUMNS` order; and a row -> the job's JSON text.

This is the per-job hot path of every push, pull and ack, so it is written out field by field
rather than looped: rows we wrote are decoded without re-validation (`Job.trusted`), and a
pulled job, which is sent rather than used, is rendered as JSON straight from its row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any
from uuid import UUID

from pydantic_core import to_json

from conveyor._limits import dumps
from conveyor.lifecycle import dt_to_ms, ms_to_dt
from conveyor.models import Backoff, Job, JobState, LogEntry

from .dialect import COLUMNS, Dialect

TIME_FIELDS = frozenset({"delay_until", "created_at", "updated_at", "started_at", "completed_at", "last_heartbeat"})
JSON_FIELDS = frozenset({"data", "result", "metadata"})
_STATES = {s.value: s for s in JobState}
_BACKOFFS = {b.value: b for b in Backoff}
_UTC = UTC
_from_ts = datetime.fromtimestamp
_loads = json.loads

EXPECTED_COLUMNS = (
    "id", "custom_id", "name", "queue", "data", "result", "state", "progress", "logs", "priority",
    "order_key", "delay_until", "created_at", "updated_at", "started_at", "completed_at",
    "max_attempts", "attempt", "backoff", "backoff_delay_ms", "last_error", "ttl_ms", "timeout_ms",
    "unique_key", "tags", "group_id", "metadata", "depends_on", "flow_id", "lifo",
    "remove_on_complete", "remove_on_fail", "worker_id", "last_heartbeat", "deadline_at",
    "expires_at",
)  # fmt: skip
if COLUMNS != EXPECTED_COLUMNS:  # pragma: no cover - guards the hand-written order below
    raise ImportError(f"conveyor_jobs columns changed; update codec.py: {COLUMNS}")
RENDERED_FIELDS = (
    "id", "custom_id", "name", "queue", "data", "result", "state", "progress", "logs", "priority",
    "delay_until", "created_at", "updated_at", "started_at", "completed_at", "max_attempts",
    "attempt", "backoff", "backoff_delay_ms", "last_error", "ttl_ms", "timeout_ms", "unique_key",
    "tags", "group_id", "metadata", "depends_on", "flow_id", "lifo", "remove_on_complete",
    "remove_on_fail", "worker_id", "last_heartbeat",
)  # fmt: skip
if tuple(Job.model_fields) != RENDERED_FIELDS:  # pragma: no cover - guards `render_job`
    raise ImportError(f"Job fields changed; update codec.render_job: {tuple(Job.model_fields)}")


def encode_logs(logs: list[LogEntry]) -> str | None:
    if not logs:
        return None
    return dumps([{"timestamp": e.timestamp.isoformat(), "message": e.message} for e in logs])


def encode_value(field: str, value: Any) -> Any:
    """One `Job` field value -> its column value (ids are left to the dialect)."""
    if value is None:
        return None
    if field in TIME_FIELDS:
        return dt_to_ms(value)
    if field in JSON_FIELDS:
        return dumps(value)
    if field == "logs":
        return encode_logs(value)
    if field == "tags":
        return dumps(value) if value else None
    if field == "depends_on":
        return dumps([str(v) for v in value]) if value else None
    if field in ("state", "backoff"):
        return value._value_
    return value


def encode_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: encode_value(k, v) for k, v in values.items()}


def _ms(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    global _last
    last = _last  # one (datetime, ms) pair, read and replaced whole: safe across threads
    if last[0] is not dt:  # the jobs of one batch share their times: convert each once
        last = _last = (dt, round(dt.timestamp() * 1000))
    return last[1]


_last: tuple[datetime | None, int] = (None, 0)


def encode_job(job: Job, dialect: Dialect, data_text: str | None = None) -> tuple[Any, ...]:
    """A full row for insert. ``data_text`` is ``data`` already serialized by the kernel."""
    j = job.__dict__
    created = _ms(j["created_at"])
    assert created is not None
    updated = created if j["updated_at"] is j["created_at"] else _ms(j["updated_at"])
    data = data_text if data_text is not None else (None if j["data"] is None else dumps(j["data"]))
    # None checked here, not in `_ms`: a new job leaves most times empty, and the calls saved
    # are ~1% of the server's instructions per job (bench_instructions.py). Enums give their
    # ``_value_``: ``.value`` is a Python-level property on Python 3.11.
    ttl, delay_until, started_at, completed_at, heartbeat = (
        j["ttl_ms"],
        j["delay_until"],
        j["started_at"],
        j["completed_at"],
        j["last_heartbeat"],
    )
    return (
        dialect.encode_id(j["id"]), j["custom_id"], j["name"], j["queue"],
        None if data == "null" else data,
        None if j["result"] is None else dumps(j["result"]),
        j["state"]._value_, j["progress"], encode_logs(j["logs"]) if j["logs"] else None, j["priority"],
        # order_key: LIFO keys are negative (ahead of FIFO ones) and newest first to the id's
        # ms and counter bits, so jobs pushed in one millisecond still come out last-in first
        -(j["id"].int >> 64) if j["lifo"] else created,
        None if delay_until is None else _ms(delay_until), created, updated,
        None if started_at is None else _ms(started_at), None if completed_at is None else _ms(completed_at),
        j["max_attempts"], j["attempt"], j["backoff"]._value_, j["backoff_delay_ms"], j["last_error"],
        ttl, j["timeout_ms"], j["unique_key"],
        dumps(j["tags"]) if j["tags"] else None,
        j["group_id"],
        None if j["metadata"] is None else dumps(j["metadata"]),
        dumps([str(v) for v in j["depends_on"]]) if j["depends_on"] else None,
        j["flow_id"], j["lifo"], j["remove_on_complete"], j["remove_on_fail"], j["worker_id"],
        None if heartbeat is None else _ms(heartbeat),
        None,
        created + ttl if ttl else None,
    )  # fmt: skip


def decode_job(row: Sequence[Any], dialect: Dialect) -> Job:
    """A `Job` from a row in `COLUMNS` order, built without validation (we wrote the row)."""
    (
        id_, custom_id, name, queue, data, result, state, progress, logs, priority,
        _order_key, delay_until, created_at, updated_at, started_at, completed_at,
        max_attempts, attempt, backoff, backoff_delay_ms, last_error, ttl_ms, timeout_ms,
        unique_key, tags, group_id, metadata, depends_on, flow_id, lifo,
        remove_on_complete, remove_on_fail, worker_id, last_heartbeat, _deadline_at, _expires_at,
    ) = row  # fmt: skip
    updated = ms_to_dt(updated_at)  # cached: the jobs of one claim or batch share their times
    return Job.trusted(
        {
            "id": dialect.decode_id(id_),
            "custom_id": custom_id,
            "name": name,
            "queue": queue,
            "data": None if data is None else _loads(data),
            "result": None if result is None else _loads(result),
            "state": _STATES[state],
            "progress": progress,
            "logs": _decode_logs(logs) if logs else [],
            "priority": priority,
            "delay_until": None if delay_until is None else _from_ts(delay_until / 1000, tz=_UTC),
            "created_at": ms_to_dt(created_at),
            "updated_at": updated,
            "started_at": _same_or_dt(started_at, updated_at, updated),
            "completed_at": None if completed_at is None else _from_ts(completed_at / 1000, tz=_UTC),
            "max_attempts": max_attempts,
            "attempt": attempt,
            "backoff": _BACKOFFS[backoff],
            "backoff_delay_ms": backoff_delay_ms,
            "last_error": last_error,
            "ttl_ms": ttl_ms,
            "timeout_ms": timeout_ms,
            "unique_key": unique_key,
            "tags": _loads(tags) if tags else [],
            "group_id": group_id,
            "metadata": None if metadata is None else _loads(metadata),
            "depends_on": [UUID(d) for d in _loads(depends_on)] if depends_on else [],
            "flow_id": flow_id,
            "lifo": bool(lifo),
            "remove_on_complete": bool(remove_on_complete),
            "remove_on_fail": bool(remove_on_fail),
            "worker_id": worker_id,
            "last_heartbeat": _same_or_dt(last_heartbeat, updated_at, updated),
        }
    )


def _same_or_dt(ms: int | None, same_ms: int, same: datetime) -> datetime | None:
    """Share the (immutable) datetime already made for an equal timestamp: a freshly claimed
    job has started_at == last_heartbeat == updated_at, and this is the per-job hot path."""
    if ms is None:
        return None
    return same if ms == same_ms else _from_ts(ms / 1000, tz=_UTC)


def _decode_logs(text: str) -> list[LogEntry]:
    return [LogEntry(timestamp=datetime.fromisoformat(e["timestamp"]), message=e["message"]) for e in _loads(text)]


_STATE_JSON = {s.value: f'"{s.value}"' for s in JobState}
_BACKOFF_JSON = {b.value: f'"{b.value}"' for b in Backoff}
_METADATA_KEY = '"metadata":'  # left out when null, as `Job.metadata` is (RustQueue compatibility)


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _int(value: int | None) -> str:
    return "null" if value is None else str(value)


def _bool(value: Any) -> str:
    return "true" if value else "false"


@lru_cache(maxsize=1024)
def _time(ms: int) -> str:
    """A stored time as a `Job` serializes it: pydantic itself formats the datetime, once per
    distinct millisecond (the jobs of one claim share their times)."""
    return to_json(ms_to_dt(ms)).decode()


def _time_or_null(ms: int | None) -> str:
    return "null" if ms is None else _time(ms)


def render_job(row: Sequence[Any], dialect: Dialect) -> str:
    """The JSON text of ``decode_job(row)`` as `wire.encode` writes it (the same fields, order
    and values), without building the `Job`: 3-4x cheaper, and a pulled job is sent, not used.

    Stored payloads (``data``, ``result``, ``metadata``, ``tags``, ``depends_on``) are the
    compact JSON the kernel wrote, so they are spliced in as they are. The bytes may differ from
    pydantic's where JSON allows (``1e-07`` for ``1e-7``, escapes), never the values: a test
    compares both on every kind of field. A job with log entries goes through the model."""
    (
        id_, custom_id, name, queue, data, result, state, progress, logs, priority,
        _order_key, delay_until, created_at, updated_at, started_at, completed_at,
        max_attempts, attempt, backoff, backoff_delay_ms, last_error, ttl_ms, timeout_ms,
        unique_key, tags, group_id, metadata, depends_on, flow_id, lifo,
        remove_on_complete, remove_on_fail, worker_id, last_heartbeat, _deadline_at, _expires_at,
    ) = row  # fmt: skip
    if logs:
        return to_json(decode_job(row, dialect)).decode()
    if (
        custom_id is None and result is None and delay_until is None and completed_at is None
        and last_error is None and ttl_ms is None and timeout_ms is None and unique_key is None and tags is None
        and group_id is None and metadata is None and depends_on is None and flow_id is None
        and not (lifo or remove_on_complete or remove_on_fail)
    ):  # fmt: skip  # what `USUAL_SQL` selects
        shared = usual_shared(queue, state, updated_at, started_at, worker_id, last_heartbeat)
        return render_usual(
            dialect, id_, name, data, progress, priority, created_at, max_attempts, attempt, backoff,
            backoff_delay_ms, shared,
        )  # fmt: skip
    return (
        f'{{"id":"{dialect.id_text(id_)}","custom_id":{_text(custom_id)},"name":{encode_basestring(name)},'
        f'"queue":{encode_basestring(queue)},"data":{data or "null"},"result":{result or "null"},'
        f'"state":{_STATE_JSON[state]},"progress":{progress},"logs":[],"priority":{priority},'
        f'"delay_until":{_time_or_null(delay_until)},"created_at":{_time(created_at)},'
        f'"updated_at":{_time(updated_at)},"started_at":{_time_or_null(started_at)},'
        f'"completed_at":{_time_or_null(completed_at)},"max_attempts":{max_attempts},"attempt":{attempt},'
        f'"backoff":{_BACKOFF_JSON[backoff]},"backoff_delay_ms":{backoff_delay_ms},'
        f'"last_error":{_text(last_error)},"ttl_ms":{_int(ttl_ms)},"timeout_ms":{_int(timeout_ms)},'
        f'"unique_key":{_text(unique_key)},"tags":{tags or "[]"},"group_id":{_text(group_id)},'
        f'{"" if metadata is None else f"{_METADATA_KEY}{metadata},"}"depends_on":{depends_on or "[]"},'
        f'"flow_id":{_text(flow_id)},"lifo":{_bool(lifo)},"remove_on_complete":{_bool(remove_on_complete)},'
        f'"remove_on_fail":{_bool(remove_on_fail)},"worker_id":{_text(worker_id)},'
        f'"last_heartbeat":{_time_or_null(last_heartbeat)}}}'
    )


USUAL_SQL = (
    "custom_id IS NULL AND result IS NULL AND logs IS NULL AND delay_until IS NULL AND completed_at IS NULL "
    "AND last_error IS NULL AND ttl_ms IS NULL AND timeout_ms IS NULL AND unique_key IS NULL AND tags IS NULL "
    "AND group_id IS NULL AND metadata IS NULL AND depends_on IS NULL AND flow_id IS NULL "
    "AND NOT lifo AND NOT remove_on_complete AND NOT remove_on_fail"
)
"""A row `render_usual` can write: every optional field empty (most jobs)."""
USUAL_COLUMNS = (
    "id", "name", "data", "progress", "priority", "created_at", "max_attempts", "attempt", "backoff",
    "backoff_delay_ms",
)  # fmt: skip
"""What `render_usual` needs of a claimed row beyond what the claim itself set (its queue too)."""


def usual_shared(
    queue: str, state: str, updated_at: int, started_at: int | None, worker_id: str | None, last_heartbeat: int | None
) -> tuple[str, str, str, str]:
    """The parts of `render_usual`'s text that depend on these fields only: the jobs of one claim
    share them (one queue, one state, one time, one worker), so a claim makes them once."""
    times = f'"updated_at":{_time(updated_at)},"started_at":{_time_or_null(started_at)},"completed_at":null,'
    tail = (
        '"last_error":null,"ttl_ms":null,"timeout_ms":null,"unique_key":null,"tags":[],"group_id":null,'
        '"depends_on":[],"flow_id":null,"lifo":false,"remove_on_complete":false,"remove_on_fail":false,'
        f'"worker_id":{_text(worker_id)},"last_heartbeat":{_time_or_null(last_heartbeat)}}}'
    )
    return encode_basestring(queue), _STATE_JSON[state], times, tail


def render_usual(
    dialect: Dialect, id_: Any, name: str, data: str | None, progress: int, priority: int, created_at: int,
    max_attempts: int, attempt: int, backoff: str, backoff_delay_ms: int, shared: tuple[str, str, str, str],
) -> str:  # fmt: skip
    """`render_job` for a row with every optional field empty (`USUAL_SQL`), from the fields that
    are not and the parts ``shared`` by its claim (`usual_shared`): the same text with a fraction
    of the calls, and the claim reads a third of the columns."""
    queue, state, times, tail = shared
    return (
        f'{{"id":"{dialect.id_text(id_)}","custom_id":null,"name":{encode_basestring(name)},"queue":{queue},'
        f'"data":{data or "null"},"result":null,"state":{state},"progress":{progress},"logs":[],'
        f'"priority":{priority},"delay_until":null,"created_at":{_time(created_at)},{times}'
        f'"max_attempts":{max_attempts},"attempt":{attempt},"backoff":{_BACKOFF_JSON[backoff]},'
        f'"backoff_delay_ms":{backoff_delay_ms},{tail}'
    )
