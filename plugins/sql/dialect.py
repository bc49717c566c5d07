"""The little that differs between SQLite and PostgreSQL on the hot paths.

Hot statements (insert, claim, lock-and-update, get) bypass SQLAlchemy's per-call statement
machinery, which costs ~190 µs per statement against ~5 µs for the driver cursor (measured in
tests/benchmarks/RESULTS.md). Their SQL is written once with ``?`` placeholders over the column
list of `tables.jobs`; this class adapts placeholders, id encoding and row locking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import Connection

from conveyor._ids import uuid_from_int

from .tables import jobs

COLUMNS: tuple[str, ...] = tuple(c.name for c in jobs.columns)
COLUMN_LIST = ", ".join(COLUMNS)
TABLE = jobs.name
CHUNK = 500
"""Bound values per statement at most: SQLite builds before 3.32 take 999."""


class Dialect:
    def __init__(self, name: str) -> None:
        self.name = name
        self.postgres = name == "postgresql"
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        self.for_update = " FOR UPDATE" if self.postgres else ""

    @lru_cache(maxsize=256)  # noqa: B019 - two instances for the life of the process
    def sql(self, text: str) -> str:
        """Adapt ``?`` placeholders to the driver's paramstyle."""
        return text.replace("?", "%s") if self.postgres else text

    def placeholders(self, n: int) -> str:
        return ", ".join("?" * n)

    def encode_id(self, job_id: UUID) -> Any:
        # SQLAlchemy's Uuid type stores CHAR(32) hex on SQLite and native uuid on PostgreSQL;
        # the raw paths must agree with it so Core and raw statements see the same rows.
        # What `UUID.hex` returns, without its Python-level property call (and % formats an
        # int faster than an f-string's format spec does)
        return job_id if self.postgres else "%032x" % job_id.int  # noqa: UP031

    def decode_id(self, value: Any) -> UUID:
        return value if isinstance(value, UUID) else uuid_from_hex(value)

    def id_text(self, value: Any) -> str:
        """A stored id in the hyphenated form JSON gives a `UUID`, without building one."""
        if self.postgres:
            return str(value)
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"


def uuid_from_hex(text: str) -> UUID:
    """`UUID` from the 32-digit hex we stored, without re-parsing the canonical forms."""
    return uuid_from_int(int(text, 16))


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgresql")


def dialect_of(name: str) -> Dialect:
    return POSTGRES if name == "postgresql" else SQLITE


T = TypeVar("T")


def chunks(items: Sequence[T], values_per_item: int = 1) -> Iterator[Sequence[T]]:
    """``items`` in slices that bind at most `CHUNK` values, each item binding
    ``values_per_item``: SQLite before 3.32 takes at most 999 per statement, and a parent may
    have 100,000 children. `CHUNK` is read on each call (tests lower it to cross chunk edges)."""
    size = max(1, CHUNK // values_per_item)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cursor_of(conn: Connection) -> tuple[Any, Dialect]:
    """The driver's own cursor, for hot statements, and the connection's dialect."""
    return conn.connection.cursor(), dialect_of(conn.dialect.name)
