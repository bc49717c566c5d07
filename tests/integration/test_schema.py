"""Schema versions: an older database is migrated when opened, a newer one is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from conveyor import Conveyor, StorageError
from tests.conftest import PG_URL

pytestmark = pytest.mark.anyio
OLD_INDEXES = {  # version 2: every active / not-started job was in the sweep indexes
    "ix_conveyor_jobs_deadline": "(deadline_at) WHERE state = 'active'",
    "ix_conveyor_jobs_expires": "(expires_at) WHERE state IN ('waiting', 'delayed', 'blocked')",
}


async def open_and_close(url: str) -> None:
    async with Conveyor(url, maintenance=False, plugin_autoload=False):
        pass


async def test_a_version_2_sqlite_database_gets_the_narrow_sweep_indexes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        job_id = await app.push("q", "kept", timeout_ms=5000)
    with sqlite3.connect(path) as db:
        for name, definition in OLD_INDEXES.items():
            db.execute(f"DROP INDEX {name}")
            db.execute(f"CREATE INDEX {name} ON conveyor_jobs {definition}")
        db.execute("UPDATE conveyor_meta SET value = '2' WHERE key = 'schema_version'")
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        assert (await app.get(job_id)) is not None  # data survives the migration
        [job] = await app.pull("q")
        assert job.id == job_id
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM conveyor_meta WHERE key = 'schema_version'").fetchone()[0]
        indexes = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE name LIKE 'ix_conveyor_jobs_%'"))
    assert version == "3"
    assert "deadline_at IS NOT NULL" in indexes["ix_conveyor_jobs_deadline"]
    assert "expires_at IS NOT NULL" in indexes["ix_conveyor_jobs_expires"]


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    await open_and_close(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE conveyor_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StorageError, match="newer than this Conveyor's"):
        await open_and_close(f"sqlite:///{path}")


@pytest.mark.postgres
async def test_a_version_2_postgresql_schema_is_migrated(pg_schema: str) -> None:
    await open_and_close(pg_schema)
    schema = pg_schema.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as db:
        for name, definition in OLD_INDEXES.items():
            db.execute(f'DROP INDEX "{schema}".{name}')
            db.execute(f'CREATE INDEX {name} ON "{schema}".conveyor_jobs {definition}')
        db.execute(f"UPDATE \"{schema}\".conveyor_meta SET value = '2' WHERE key = 'schema_version'")
    await open_and_close(pg_schema)
    with psycopg.connect(PG_URL, autocommit=True) as db:
        rows = db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)).fetchall()
    indexes = dict(rows)
    assert "deadline_at IS NOT NULL" in indexes["ix_conveyor_jobs_deadline"]
    assert "expires_at IS NOT NULL" in indexes["ix_conveyor_jobs_expires"]
