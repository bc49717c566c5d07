"""Job model <-> table row. Hot path: rows are decoded without re-validating what we wrote."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from conveyor._limits import dumps
from conveyor.lifecycle import dt_to_ms, ms_to_dt
from conveyor.models import Backoff, Job, JobState, LogEntry

TIME_FIELDS = frozenset({"delay_until", "created_at", "updated_at", "started_at", "completed_at", "last_heartbeat"})
JSON_FIELDS = frozenset({"data", "result", "metadata"})
LIST_FIELDS = frozenset({"tags", "depends_on"})

_STATES = {s.value: s for s in JobState}
_BACKOFFS = {b.value: b for b in Backoff}
_PLAIN = (
    "custom_id", "name", "queue", "progress", "priority", "max_attempts", "attempt",
    "backoff_delay_ms", "last_error", "ttl_ms", "timeout_ms", "unique_key", "group_id",
    "flow_id", "lifo", "remove_on_complete", "remove_on_fail", "worker_id",
)  # fmt: skip


def _encode_logs(logs: list[LogEntry]) -> str | None:
    if not logs:
        return None
    return dumps([{"timestamp": e.timestamp.isoformat(), "message": e.message} for e in logs])


def encode_value(field: str, value: Any) -> Any:
    """One `Job` field value -> its column value."""
    if field in TIME_FIELDS:
        return None if value is None else dt_to_ms(value)
    if field in JSON_FIELDS:
        return None if value is None else dumps(value)
    if field == "logs":
        return _encode_logs(value)
    if field == "tags":
        return dumps(value) if value else None
    if field == "depends_on":
        return dumps([str(v) for v in value]) if value else None
    if field in ("state", "backoff"):
        return value.value
    return value


def encode_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: encode_value(k, v) for k, v in values.items()}


def encode_job(job: Job, *, data_text: str | None = None) -> dict[str, Any]:
    """A full row for insert. ``data_text`` is the already-serialized payload when known."""
    row = encode_values({name: getattr(job, name) for name in Job.model_fields})
    if data_text is not None:
        row["data"] = data_text
    created = row["created_at"]
    row["order_key"] = -created if job.lifo else created
    row["expires_at"] = created + job.ttl_ms if job.ttl_ms else None
    row["deadline_at"] = None
    return row


def decode_job(row: Mapping[str, Any]) -> Job:
    values: dict[str, Any] = {name: row[name] for name in _PLAIN}
    values["id"] = row["id"]
    values["state"] = _STATES[row["state"]]
    values["backoff"] = _BACKOFFS[row["backoff"]]
    for name in TIME_FIELDS:
        ms = row[name]
        values[name] = None if ms is None else ms_to_dt(ms)
    for name in ("data", "result"):
        text = row[name]
        values[name] = None if text is None else json.loads(text)
    meta = row["metadata"]
    values["metadata"] = None if meta is None else json.loads(meta)
    tags = row["tags"]
    values["tags"] = json.loads(tags) if tags else []
    deps = row["depends_on"]
    values["depends_on"] = [UUID(d) for d in json.loads(deps)] if deps else []
    logs = row["logs"]
    values["logs"] = (
        [LogEntry(timestamp=datetime.fromisoformat(e["timestamp"]), message=e["message"]) for e in json.loads(logs)]
        if logs
        else []
    )
    return Job.model_construct(**values)

