"""Schedules: rare writes, so plain SQLAlchemy Core on the `tables` schema; a firing advances
its schedule and inserts its job in the caller's transaction (`fire_schedule`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from conveyor.errors import DuplicateKeyError
from conveyor.lifecycle import dt_to_ms, ms_to_dt
from conveyor.schedules import Schedule
from conveyor.storage import Firing

from . import primitives as p
from .dialect import POSTGRES, SQLITE, dialect_of
from .primitives import Woken
from .tables import queues, schedules


def insert_schedule(conn: Connection, schedule: Schedule) -> None:
    taken = DuplicateKeyError(f"a schedule named {schedule.name!r} already exists", details={"name": schedule.name})
    if get_schedule(conn, schedule.name) is not None:
        raise taken
    try:
        conn.execute(insert(schedules).values(**_row(schedule)))
    except IntegrityError:  # created meanwhile by another node
        raise taken from None


def list_schedules(conn: Connection) -> list[Schedule]:
    return [_schedule(row._mapping) for row in conn.execute(select(schedules).order_by(schedules.c.name))]


def get_schedule(conn: Connection, name: str) -> Schedule | None:
    row = conn.execute(select(schedules).where(schedules.c.name == name)).first()
    return None if row is None else _schedule(row._mapping)


def delete_schedule(conn: Connection, name: str) -> bool:
    return conn.execute(delete(schedules).where(schedules.c.name == name)).rowcount > 0


def set_schedule_paused(conn: Connection, name: str, paused: bool, now_ms: int) -> bool:
    changed = update(schedules).where(schedules.c.name == name).values(paused=paused, updated_at=now_ms)
    return conn.execute(changed).rowcount > 0


def due_schedules(conn: Connection, now_ms: int, limit: int) -> list[Schedule]:
    # Every sweep runs this, usually to find nothing: plain SQL on the driver's cursor (building
    # and compiling it with SQLAlchemy Core cost ~600,000 instructions a sweep).
    d = dialect_of(conn.dialect.name)
    cur = conn.connection.cursor()
    cur.execute(_DUE_SQL[d.postgres], (False, now_ms, True, limit))
    return [_schedule(dict(zip(_COLUMNS, row, strict=True))) for row in cur.fetchall()]


_COLUMNS = tuple(column.name for column in schedules.columns)
_DUE = (
    f"SELECT {', '.join(_COLUMNS)} FROM {schedules.name} s WHERE s.paused = ? AND s.next_run_at <= ? "
    "AND (s.max_executions IS NULL OR s.execution_count < s.max_executions) "
    f"AND NOT EXISTS (SELECT 1 FROM {queues.name} q WHERE q.name = s.queue AND q.paused = ?) "
    "ORDER BY s.next_run_at, s.name LIMIT ?"
)
_DUE_SQL = {postgres: dialect.sql(_DUE) for postgres, dialect in ((False, SQLITE), (True, POSTGRES))}


def fire_schedule(conn: Connection, firing: Firing) -> tuple[bool | None, Woken]:
    c = schedules.c
    advanced = conn.execute(
        update(schedules)
        .where(c.name == firing.name, c.next_run_at == firing.due_ms, c.paused.is_(False))
        .where((c.max_executions.is_(None)) | (c.execution_count < c.max_executions))
        .values(
            next_run_at=firing.next_ms,
            last_run_at=firing.now_ms,
            execution_count=c.execution_count + 1,
            paused=(c.max_executions.is_not(None)) & (c.execution_count + 1 >= c.max_executions),
            updated_at=firing.now_ms,
        )
    ).rowcount
    if not advanced:
        return None, set()  # paused, deleted or fired by another node meanwhile
    # A unique key still held is the previous run still pending: this run is skipped, the
    # schedule moves on. Anything else (a paused queue) undoes the whole firing.
    cur = conn.connection.cursor()
    cur.execute("SAVEPOINT firing")
    try:
        woken = p.insert_jobs(conn, [firing.job], [firing.data_text])
    except DuplicateKeyError:
        cur.execute("ROLLBACK TO SAVEPOINT firing")
        # the run is skipped, not counted: it cannot have exhausted the schedule either
        conn.execute(update(schedules).where(c.name == firing.name)
                     .values(execution_count=c.execution_count - 1, paused=False))  # fmt: skip
        return False, set()
    cur.execute("RELEASE SAVEPOINT firing")
    return True, woken


def _row(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "queue": schedule.queue,
        "job_name": schedule.job_name,
        "job_data": None if schedule.job_data is None else json.dumps(schedule.job_data),
        "job_options": None if schedule.job_options is None else json.dumps(schedule.job_options),
        "cron_expr": schedule.cron_expr,
        "every_ms": schedule.every_ms,
        "timezone": schedule.timezone,
        "max_executions": schedule.max_executions,
        "execution_count": schedule.execution_count,
        "paused": schedule.paused,
        "last_run_at": None if schedule.last_run_at is None else dt_to_ms(schedule.last_run_at),
        "next_run_at": dt_to_ms(schedule.next_run_at),
        "created_at": dt_to_ms(schedule.created_at),
        "updated_at": dt_to_ms(schedule.updated_at),
    }


def _schedule(row: Mapping[Any, Any]) -> Schedule:
    return Schedule(
        name=row["name"],
        queue=row["queue"],
        job_name=row["job_name"],
        job_data=None if row["job_data"] is None else json.loads(row["job_data"]),
        job_options=None if row["job_options"] is None else json.loads(row["job_options"]),
        cron_expr=row["cron_expr"],
        every_ms=row["every_ms"],
        timezone=row["timezone"],
        max_executions=row["max_executions"],
        execution_count=row["execution_count"],
        paused=bool(row["paused"]),
        last_run_at=None if row["last_run_at"] is None else ms_to_dt(row["last_run_at"]),
        next_run_at=ms_to_dt(row["next_run_at"]),
        created_at=ms_to_dt(row["created_at"]),
        updated_at=ms_to_dt(row["updated_at"]),
    )
