"""Built-in storage plugin ``sql``: SQLModel tables on SQLite (embedded) and PostgreSQL.

It implements the storage hook like any third-party backend would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.hookspecs import hookimpl
from conveyor.storage import Storage

if TYPE_CHECKING:
    from conveyor.app import Conveyor


@hookimpl
def conveyor_storage(app: Conveyor, url: str) -> Storage | None:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from .sqlite import SqliteStorage

        return SqliteStorage(url, synchronous=app.settings.sqlite_synchronous)
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        from .postgres import PostgresStorage

        return PostgresStorage(url.replace("postgres://", "postgresql://", 1) if scheme == "postgres" else url)
    return None
