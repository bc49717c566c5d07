"""Schema versions: an older database is migrated when opened, a newer one is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from conveyor import Conveyor, DuplicateKeyError, QueueCounts, StorageError
from conveyor.plugins.sql.tables import SCHEMA_VERSION
from tests.conftest import PG_URL

pytestmark = pytest.mark.anyio
OLD_INDEXES = {  # version 2: every active / not-started job was in the sweep indexes
    "ix_conveyor_jobs_deadline": "(deadline_at) WHERE state = 'active'",
    "ix_conveyor_jobs_expires": "(expires_at) WHERE state IN ('waiting', 'delayed', 'blocked')",
}


VERSION_3_INDEXES = {  # predicates with IN lists: SQLite built a temporary table per row written
    "ux_conveyor_jobs_unique_key": (
        "UNIQUE INDEX",
        "(queue, unique_key) WHERE unique_key IS NOT NULL AND state IN ('waiting', 'delayed', 'blocked', 'active')",
    ),
    "ix_conveyor_jobs_expires": (
        "INDEX",
        "(expires_at) WHERE state IN ('waiting', 'delayed', 'blocked') AND expires_at IS NOT NULL",
    ),
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
    assert version == str(SCHEMA_VERSION)
    assert "deadline_at IS NOT NULL" in indexes["ix_conveyor_jobs_deadline"]
    assert "expires_at IS NOT NULL" in indexes["ix_conveyor_jobs_expires"]


@pytest.mark.postgres
async def test_a_version_3_postgresql_schema_gets_predicates_without_in_lists(pg_schema: str) -> None:
    async with Conveyor(pg_schema, maintenance=False, plugin_autoload=False) as app:
        await app.push("q", "held", unique_key="k")
    schema = pg_schema.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as db:
        for name, (kind, definition) in VERSION_3_INDEXES.items():
            db.execute(f'DROP INDEX "{schema}".{name}')
            db.execute(f'CREATE {kind} {name} ON "{schema}".conveyor_jobs {definition}')
        db.execute(f"UPDATE \"{schema}\".conveyor_meta SET value = '3' WHERE key = 'schema_version'")
    async with Conveyor(pg_schema, maintenance=False, plugin_autoload=False) as app:
        with pytest.raises(DuplicateKeyError):
            await app.push("q", "again", unique_key="k")
    with psycopg.connect(PG_URL, autocommit=True) as db:
        rows = db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (schema,)).fetchall()
        version = db.execute(f"SELECT value FROM \"{schema}\".conveyor_meta WHERE key = 'schema_version'").fetchone()
        # the sweep and the unique-key check still find their partial indexes (with bound
        # values, as the primitives send them; sequential scans off, as the table is tiny)
        from conveyor.plugins.sql.tables import EXPIRES_SQL, PENDING_SQL

        db.execute(f'SET search_path TO "{schema}"')
        db.execute("SET enable_seqscan = off")
        expired = db.execute(
            f"EXPLAIN SELECT id FROM conveyor_jobs WHERE {EXPIRES_SQL} AND expires_at <= %s LIMIT 5", (1,)
        ).fetchall()
        keyed = db.execute(
            "EXPLAIN SELECT unique_key, id FROM conveyor_jobs WHERE queue = %s "
            f"AND unique_key IS NOT NULL AND {PENDING_SQL} AND unique_key IN (%s) LIMIT 1",
            ("q", "k"),
        ).fetchall()
    indexes = dict(rows)
    assert version == (str(SCHEMA_VERSION),)
    for name in VERSION_3_INDEXES:  # PostgreSQL shows an OR chain as-is and an IN list as ANY
        assert "ANY" not in indexes[name] and " IN " not in indexes[name], indexes[name]
    assert "ix_conveyor_jobs_expires" in str(expired), expired
    assert "ux_conveyor_jobs_unique_key" in str(keyed), keyed


def test_no_partial_index_predicate_uses_an_in_list() -> None:
    from conveyor.plugins.sql.tables import jobs

    for index in jobs.indexes:
        for dialect in ("sqlite", "postgresql"):
            where = index.dialect_options[dialect]["where"]
            assert where is None or " IN " not in str(where).upper(), (index.name, dialect)


async def test_a_version_3_sqlite_database_gets_predicates_without_in_lists(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    url = f"sqlite:///{path}"
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        held = await app.push("q", "held", unique_key="k", ttl_ms=60_000)
    with sqlite3.connect(path) as db:
        for name, (kind, definition) in VERSION_3_INDEXES.items():
            db.execute(f"DROP INDEX {name}")
            db.execute(f"CREATE {kind} {name} ON conveyor_jobs {definition}")
        db.execute("UPDATE conveyor_meta SET value = '3' WHERE key = 'schema_version'")
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        with pytest.raises(DuplicateKeyError):  # the rebuilt unique index still holds the key
            await app.push("q", "again", unique_key="k")
        [job] = await app.pull("q")
        assert job.id == held and job.ttl_ms == 60_000
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM conveyor_meta WHERE key = 'schema_version'").fetchone()[0]
        indexes = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
        # the sweep and the unique-key check still find their partial indexes
        from conveyor.plugins.sql.tables import EXPIRES_SQL, PENDING_SQL

        expired = db.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM conveyor_jobs WHERE {EXPIRES_SQL} AND expires_at <= 1 LIMIT 5"
        ).fetchall()
        keyed = db.execute(
            "EXPLAIN QUERY PLAN SELECT unique_key, id FROM conveyor_jobs WHERE queue = 'q' "
            f"AND unique_key IS NOT NULL AND {PENDING_SQL} AND unique_key IN ('k') LIMIT 1"
        ).fetchall()
    assert version == str(SCHEMA_VERSION)
    for name in VERSION_3_INDEXES:
        assert " IN " not in indexes[name].upper() and "OR state = " in indexes[name], indexes[name]
    assert "ix_conveyor_jobs_expires" in str(expired)
    assert "ux_conveyor_jobs_unique_key" in str(keyed)


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


async def test_a_version_4_sqlite_database_gets_the_schedules_table(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    url = f"sqlite:///{path}"
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        job_id = await app.push("q", "kept")
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE conveyor_schedules")
        db.execute("UPDATE conveyor_meta SET value = '4' WHERE key = 'schema_version'")
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        assert (await app.get(job_id)) is not None
        await app.add_schedule({"name": "s", "queue": "q", "job_name": "j", "every_ms": 1000})
        assert [s.name for s in await app.schedules()] == ["s"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM conveyor_meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )


QUEUE_STATE_INDEX = "CREATE INDEX ix_conveyor_jobs_queue_state ON {table} (queue, state)"  # version 5


async def _a_job_in_every_state(app: Conveyor) -> tuple[QueueCounts, UUID]:
    """Waiting, active, delayed, blocked, completed, cancelled and dead-lettered jobs in ``q``
    and one waiting job in ``other``: the counts ``stats("q")`` must give, and the DLQ job."""
    for name in ("done", "dead", "active"):
        await app.push("q", name, max_attempts=1)
    await app.push("q", "waiting-1")
    await app.push("q", "waiting-2")
    await app.push("other", "elsewhere")
    await app.push("q", "later", delay_ms=3_600_000)
    parent = await app.push("q", "parent", delay_ms=3_600_000)
    await app.push("q", "child", depends_on=[parent])
    await app.cancel(await app.push("q", "cancelled"))
    pulled = {job.name: job.id for job in await app.pull("q", 3)}
    assert set(pulled) == {"done", "dead", "active"}
    await app.ack(pulled["done"], "ok")
    await app.fail(pulled["dead"], "boom")
    counts = QueueCounts(waiting=2, active=1, delayed=2, blocked=1, completed=1, cancelled=1, dlq=1)
    return counts, pulled["dead"]


async def _check_counts_and_dlq(app: Conveyor, counts: QueueCounts, dead: UUID) -> None:
    assert await app.stats("q") == counts
    assert {info.name: info.counts for info in await app.queues()} == {"q": counts, "other": QueueCounts(waiting=1)}
    assert [job.id for job in await app.dlq("q")] == [dead]


async def test_a_version_5_sqlite_database_gets_the_settled_index(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    url = f"sqlite:///{path}"
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        counts, dead = await _a_job_in_every_state(app)
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX ix_conveyor_jobs_settled")
        db.execute(QUEUE_STATE_INDEX.format(table="conveyor_jobs"))
        db.execute("UPDATE conveyor_meta SET value = '5' WHERE key = 'schema_version'")
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        await _check_counts_and_dlq(app, counts, dead)
    with sqlite3.connect(path) as db:
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        from conveyor.plugins.sql.tables import SETTLED_SQL

        listing = db.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM conveyor_jobs WHERE queue = 'q' AND {SETTLED_SQL} AND state = 'dlq'"
        ).fetchall()
        counting = db.execute(
            f"EXPLAIN QUERY PLAN SELECT queue, state, count(*) FROM conveyor_jobs WHERE {SETTLED_SQL} "
            "GROUP BY queue, state"
        ).fetchall()
    assert "ix_conveyor_jobs_settled" in indexes and "ix_conveyor_jobs_queue_state" not in indexes
    assert "ix_conveyor_jobs_settled" in str(listing), listing
    assert "COVERING INDEX ix_conveyor_jobs_settled" in str(counting), counting


@pytest.mark.postgres
async def test_a_version_5_postgresql_schema_gets_the_settled_index(pg_schema: str) -> None:
    async with Conveyor(pg_schema, maintenance=False, plugin_autoload=False) as app:
        counts, dead = await _a_job_in_every_state(app)
    schema = pg_schema.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as db:
        db.execute(f'DROP INDEX "{schema}".ix_conveyor_jobs_settled')
        db.execute(QUEUE_STATE_INDEX.format(table=f'"{schema}".conveyor_jobs'))
        db.execute(f"UPDATE \"{schema}\".conveyor_meta SET value = '5' WHERE key = 'schema_version'")
    async with Conveyor(pg_schema, maintenance=False, plugin_autoload=False) as app:
        await _check_counts_and_dlq(app, counts, dead)
    with psycopg.connect(PG_URL, autocommit=True) as db:
        rows = db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)).fetchall()
    indexes = {row[0] for row in rows}
    assert "ix_conveyor_jobs_settled" in indexes and "ix_conveyor_jobs_queue_state" not in indexes


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_stats_and_dlq_count_every_state(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Counts come from three indexes (settled, claim, heartbeat): each state is counted once."""
    url = f"sqlite:///{tmp_path / 'c.db'}" if backend == "sqlite" else request.getfixturevalue("pg_schema")
    async with Conveyor(url, maintenance=False, plugin_autoload=False) as app:
        counts, dead = await _a_job_in_every_state(app)
        await _check_counts_and_dlq(app, counts, dead)
