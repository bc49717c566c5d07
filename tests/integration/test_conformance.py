"""Storage conformance: every test runs on SQLite file, SQLite memory and PostgreSQL.

The kernel owns the semantics, so any backend that passes this suite behaves the same.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from pydantic_core import to_json

from conveyor import (
    Conveyor,
    DuplicateKeyError,
    InvalidStateError,
    Job,
    JobNotFoundError,
    JobState,
    QueuePausedError,
    ValidationError,
)
from conveyor.lifecycle import ms_to_dt

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio

META = {"workflow_id": "wf-1", "step_id": "build", "labels": {"env": "staging"}, "n": [1, 2.5, None, True]}


async def pull_one(app: Conveyor, queue: str = "q") -> UUID:
    jobs = await app.pull(queue)
    assert len(jobs) == 1
    return jobs[0].id


# -- push and get ------------------------------------------------------------------------------


async def test_push_creates_waiting_job_with_every_field(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("emails", "send", {"to": "a@example.com"}, priority=5, tags=["x"], custom_id="c-1")
    assert job_id.version == 7
    job = await app.get(job_id)
    assert job is not None
    assert (job.queue, job.name, job.data, job.state) == ("emails", "send", {"to": "a@example.com"}, JobState.WAITING)
    assert (job.priority, job.tags, job.custom_id, job.attempt, job.max_attempts) == (5, ["x"], "c-1", 0, 3)
    assert job.created_at == ms_to_dt(clock.now) and job.started_at is None and job.result is None
    wire = job.to_wire()
    assert "metadata" not in wire  # omitted when null (RustQueue compatibility)
    assert set(wire) == set(type(job).model_fields) - {"metadata"}


async def test_nested_and_flat_options_are_equivalent(app: Conveyor) -> None:
    nested = await app.get(await app.push("q", "a", None, options={"priority": 7, "metadata": META, "max_attempts": 9}))
    flat = await app.get(await app.push("q", "a", None, priority=7, metadata=META, max_attempts=9))
    assert nested and flat
    assert (nested.priority, nested.metadata, nested.max_attempts) == (flat.priority, flat.metadata, flat.max_attempts)
    assert nested.to_wire()["metadata"] == META


async def test_null_options_are_no_options(app: Conveyor) -> None:
    """As RustQueue reads a push: ``"options": null`` (serde's unset option) nests nothing."""
    one = await app.push_job("q", {"name": "a", "options": None})
    two = await app.push_job("q", {"name": "b", "priority": 3, "options": None})
    three, four = await app.push_batch(
        "q", [{"name": "c", "options": None}, {"name": "é", "lifo": True, "options": None}]
    )
    flow = await app.submit_flow({"steps": [{"key": "k", "queue": "q", "name": "f", "options": None}]})
    jobs = [await app.get(job_id) for job_id in (one, two, three, four, flow.ids["k"])]
    assert [(j.name, j.priority, j.lifo) for j in jobs if j] == [
        ("a", 0, False), ("b", 3, False), ("c", 0, False), ("é", 0, True), ("f", 0, False)]  # fmt: skip


async def test_get_unknown_job_is_none(app: Conveyor) -> None:
    assert await app.get(uuid4()) is None


async def test_delayed_job_is_promoted_when_due(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "later", delay_ms=5_000)
    job = await app.get(job_id)
    assert job and job.state is JobState.DELAYED and job.delay_until == ms_to_dt(clock.now + 5_000)
    assert await app.pull("q") == []
    clock.advance(4_999)
    await app.run_maintenance()
    assert (await app.stats("q")).delayed == 1
    clock.advance(1)
    assert (await app.run_maintenance()).promoted == 1
    assert await pull_one(app) == job_id


# -- ordering ----------------------------------------------------------------------------------


async def test_pull_orders_by_priority_then_age(app: Conveyor, clock: FakeClock) -> None:
    ids = {}
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1)]:
        ids[name] = await app.push("q", name, priority=priority)
        clock.advance(1)
    pulled = await app.pull("q", 10)
    assert [j.name for j in pulled] == ["b", "d", "a", "c", "e"]
    assert all(j.state is JobState.ACTIVE and j.started_at == ms_to_dt(clock.now) for j in pulled)


async def test_lifo_jobs_jump_ahead_within_their_priority(app: Conveyor, clock: FakeClock) -> None:
    for name, lifo in [("fifo1", False), ("lifo1", True), ("fifo2", False), ("lifo2", True)]:
        await app.push("q", name, lifo=lifo)
        clock.advance(1)
    await app.push("q", "urgent", priority=1)
    assert [j.name for j in await app.pull("q", 10)] == ["urgent", "lifo2", "lifo1", "fifo1", "fifo2"]


async def test_lifo_jobs_pushed_in_one_millisecond_come_out_newest_first(app: Conveyor) -> None:
    """The fake clock stands still: every job has the same created_at."""
    await app.push("q", "fifo")
    await app.push_batch("q", [{"name": f"b{i}", "lifo": True} for i in range(5)])
    await app.push("q", "single", lifo=True)
    assert [j.name for j in await app.pull("q", 10)] == ["single", "b4", "b3", "b2", "b1", "b0", "fifo"]


async def test_pulls_of_every_size_take_each_job_once_in_order(app: Conveyor, clock: FakeClock) -> None:
    """Claims of 1 to 17 jobs take the jobs in priority-then-age order, each exactly once, and
    leave the rest waiting; so do claims that find fewer jobs than asked for (SQLite pads
    their IN lists to a power of two)."""
    names = []
    for i in range(160):
        priority = (i * 7) % 3
        names.append((-priority, i, await app.push("q", f"j{i}", priority=priority)))
        clock.advance(1)
    expected = [job_id for _, _, job_id in sorted(names)]
    pulled = []
    for count in range(1, 18):
        got = await app.pull("q", count)
        assert len(got) == count and all(job.state is JobState.ACTIVE for job in got)
        pulled += [job.id for job in got]
    assert pulled == expected[: len(pulled)]
    assert (await app.stats("q")).waiting == 160 - len(pulled)
    assert [job.id for job in await app.pull("q", 1000)] == expected[len(pulled) :]
    for size in range(1, 18):  # claims that find fewer jobs than asked for
        ids = await app.push_batch(f"partial-{size}", [{"name": f"p{i}"} for i in range(size)])
        assert [job.id for job in await app.pull(f"partial-{size}", size + 5)] == ids


async def test_large_sqlite_claims_fit_sqlite_builds_that_bind_999_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.32 binds at most 999 values per statement: claims of up to the largest
    count, full or partial, acks of the largest batch, pushes into as many queues with as many
    unique keys, and their removal still work there (their lists of values go in chunks)."""
    import sqlite3

    from conveyor.plugins.sql.sqlite import SqliteStorage

    connect = SqliteStorage._connect

    def limited(self: SqliteStorage) -> sqlite3.Connection:
        conn = connect(self)
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        return conn

    monkeypatch.setattr(SqliteStorage, "_connect", limited)
    async with Conveyor(f"sqlite:///{tmp_path / 'old.db'}", maintenance=False, plugin_autoload=False) as app:
        full = await app.push_batch("q", [{"name": f"j{i}"} for i in range(1000)])
        assert [job.id for job in await app.pull("q", 1000)] == full
        partial = await app.push_batch("q", [{"name": f"k{i}"} for i in range(600)])
        assert [job.id for job in await app.pull("q", 1000)] == partial
        assert await app.pull("q", 1000) == []
        results = await app.ack_batch([{"id": job_id, "result": {"n": 1}} for job_id in [*full, *partial][:1000]])
        assert len(results) == 1000 and all(result.ok for result in results)
        # a batch into 1,000 queues, with 1,000 unique keys, removed when acked
        many = [{"name": "m", "queue": f"m{i}", "unique_key": f"k{i}", "remove_on_complete": True} for i in range(1000)]
        pushed = await app.push_batch("q", many)
        claimed = [job.id for i in range(1000) for job in await app.pull(f"m{i}")]
        assert claimed == pushed
        assert all(result.ok for result in await app.ack_batch([{"id": job_id} for job_id in claimed]))
        assert await app.get(pushed[0]) is None


async def test_a_batch_mixing_usual_and_other_values_stores_each_row_as_pushed(app: Conveyor) -> None:
    """Columns that hold a new job's usual value in every row of a batch are written into the
    insert as constants (`inserts`); a batch where some rows differ must store each row's own."""
    usual = {"priority": 0, "max_attempts": 3, "backoff": "exponential", "backoff_delay_ms": 1000,
             "lifo": False, "remove_on_complete": False, "remove_on_fail": False}  # fmt: skip
    other = {"priority": -2, "max_attempts": 1, "backoff": "fixed", "backoff_delay_ms": 0,
             "lifo": True, "remove_on_complete": True, "remove_on_fail": True}  # fmt: skip
    items = [{"name": f"j{i}", "data": i, **usual} for i in range(70)]
    for i, (key, value) in enumerate(other.items()):
        items[9 * i + 3][key] = value  # each column differs in one row, spread over the statements
    items.append({"name": "delayed", "delay_ms": 60_000})
    ids = await app.push_batch("q", items)
    assert ids == sorted(ids)  # made together, in the items' order, whatever their options
    for job_id, item in zip(ids, items, strict=True):
        job = await app.get(job_id)
        assert job is not None
        want = {**usual, **{k: v for k, v in item.items() if k in usual}}
        assert {key: getattr(job, key) for key in usual} == want, item["name"]
        assert (job.name, job.attempt, job.progress) == (item["name"], 0, 0)
        assert job.state == (JobState.DELAYED if item["name"] == "delayed" else JobState.WAITING)
    assert len(await app.push_batch("q", [{"name": f"k{i}"} for i in range(129)])) == 129


async def test_pull_count_and_worker_id(app: Conveyor) -> None:
    await app.push_batch("q", [{"name": f"j{i}"} for i in range(5)])
    first = await app.pull("q", 3, worker_id="w-1")
    assert [j.name for j in first] == ["j0", "j1", "j2"] and {j.worker_id for j in first} == {"w-1"}
    assert [j.name for j in await app.pull("q", 3)] == ["j3", "j4"]
    assert await app.pull("q", 3) == []
    assert await app.pull("other") == []


async def test_pulled_jobs_are_the_jobs_as_stored_after_the_claim(app: Conveyor, clock: FakeClock) -> None:
    """A claim returns each job as its row now reads, every field (SQLite reads the rows, then
    updates them, and changes what it read the same way)."""
    await app.push_batch("q", [
        {"name": "plain", "data": [1]}, {"name": "timed", "timeout_ms": 5_000, "priority": 2},
        {"name": "ttl", "ttl_ms": 60_000, "tags": ["t"], "metadata": META}, {"name": "lifo", "lifo": True},
    ])  # fmt: skip
    clock.advance(1_234)
    pulled = await app.pull("q", 3, worker_id="w-9")
    assert [job.name for job in pulled] == ["timed", "lifo", "plain"]
    for job in pulled:
        assert job == await app.get(job.id)
        assert (job.state, job.worker_id, job.started_at) == (JobState.ACTIVE, "w-9", ms_to_dt(clock.now))
    [text] = await app.pull_json("q", 5)
    stored = await app.get(json.loads(text)["id"])
    assert stored is not None and same_json(text, to_json(stored))
    assert stored.name == "ttl" and stored.worker_id is None and stored.state is JobState.ACTIVE
    # usual jobs (every optional field empty) and others, interleaved in one claim
    others = [{"custom_id": "c"}, {"metadata": {"m": 1}}, {"remove_on_fail": True}, {"max_attempts": 1}]
    await app.push_batch("r", [{"name": f"j{i}", "data": {"i": i}, **others[i // 2]} if i % 2 else {"name": f"j{i}"}
                               for i in range(8)])  # fmt: skip
    clock.advance(7)
    texts = await app.pull_json("r", 10, worker_id="w-2")
    assert [json.loads(text)["name"] for text in texts] == [f"j{i}" for i in range(8)]
    for text in texts:
        stored = await app.get(json.loads(text)["id"])
        assert stored is not None and same_json(text, to_json(stored))
        assert (stored.worker_id, stored.started_at) == ("w-2", ms_to_dt(clock.now))


def same_json(a: str | bytes, b: str | bytes) -> bool:
    """The same JSON value, key order and types included (``True == 1 == 1.0`` in Python, not
    in JSON): both re-serialized the same way."""
    return json.dumps(json.loads(a)) == json.dumps(json.loads(b))


async def test_pull_json_renders_each_job_as_its_model_serializes(app: Conveyor, clock: FakeClock) -> None:
    """The protocols send pulled jobs as the storage renders them (`pull_json`): each must be
    the same JSON value as its `Job`, whatever its fields hold."""
    text = 'quote " backslash \\ tab \t newline \n é 中 😀 \x7f \u2028 </script>'
    parent = await app.push("p", "parent")
    await pull_one(app, "p")
    await app.ack(parent)  # so a job depending on it is waiting, and can be claimed
    retried = await app.push("q", "retried", 0, max_attempts=3, backoff_delay_ms=0)
    logged = await app.push("q", "logged", False)
    assert len(await app.pull("q", 2)) == 2
    await app.fail(retried, f"boom\n{text}")  # waiting again, with attempt 1 and last_error
    await app.progress(logged, 40, f"half {text}")
    await app.release(logged)  # waiting again, with progress and a log entry
    clock.advance(1_234)  # times so far are whole seconds; from here on they have milliseconds
    delayed = await app.push("q", "delayed", None, delay_ms=1_000)
    await app.push_batch("q", [
        {"name": "plain"},
        {"name": text, "data": {"s": text, "tiny": 1e-7, "big": 2**70, "neg": -1.5e300, "deep": [[[{}]]]}},
        {"name": "options", "data": [1, "two", None, True, False, 0.1], "options": {
            "priority": -2_000_000_000, "max_attempts": 7, "backoff": "linear", "backoff_delay_ms": 0,
            "ttl_ms": 86_400_000, "timeout_ms": 5_000, "unique_key": f"k-{text}", "tags": ["a", text],
            "group_id": "g", "custom_id": f"c-{text}", "metadata": {"step": text, "n": [1, 2.5, None]},
            "depends_on": [str(parent)], "lifo": True,
        }},
        {"name": "empty containers", "data": {}, "options": {"metadata": {}, "tags": [], "remove_on_fail": True}},
        {"name": "string data", "data": "", "options": {"flow_id": text, "remove_on_complete": True}},
    ])  # fmt: skip
    clock.advance(1_000)
    await app.run_maintenance()  # promotes the delayed job: waiting, with its delay_until
    rendered = await app.pull_json("q", 100, worker_id=f"w-{text}")
    assert len(rendered) == 8
    for job_text in rendered:
        job = await app.get(json.loads(job_text)["id"])
        assert job is not None and job.state is JobState.ACTIVE
        assert same_json(job_text, to_json(job)), job.name
    assert {json.loads(job_text)["id"] for job_text in rendered} >= {str(retried), str(logged), str(delayed)}
    assert await app.pull_json("q") == []


async def test_a_storage_subclass_that_claims_its_own_way_serves_protocol_pulls(tmp_path: Path) -> None:
    """A SQL backend subclass overriding `claim_jobs` (to decrypt, audit, filter) is used by the
    protocols' `pull_json` too, not bypassed by the backend's direct rendering."""
    from conveyor.plugins.sql.sqlite import SqliteStorage

    class Decrypting(SqliteStorage):
        async def claim_jobs(self, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Job]:
            jobs = await super().claim_jobs(queue, count, now_ms, worker_id)
            return [job.model_copy(update={"data": f"plain:{job.data}"}) for job in jobs]

    storage = Decrypting(f"sqlite:///{tmp_path / 'sub.db'}")
    async with Conveyor(storage=storage, maintenance=False, plugin_autoload=False) as app:
        await app.push_batch("q", [{"name": "a", "data": "secret"}, {"name": "b", "data": "other"}])
        [first] = await app.pull_json("q")
        assert json.loads(first)["data"] == "plain:secret"
        [second] = await app.pull("q")
        assert second.data == "plain:other"


# -- ack -----------------------------------------------------------------------------------------


async def test_ack_completes_with_result(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "a")
    await pull_one(app)
    clock.advance(10)
    await app.ack(job_id, {"exit_code": 0})
    job = await app.get(job_id)
    assert job and job.state is JobState.COMPLETED and job.result == {"exit_code": 0}
    assert job.completed_at == ms_to_dt(clock.now)
    with pytest.raises(InvalidStateError, match="completed"):
        await app.ack(job_id)
    with pytest.raises(JobNotFoundError):
        await app.ack(uuid4())


async def test_ack_needs_active(app: Conveyor) -> None:
    job_id = await app.push("q", "a")
    with pytest.raises(InvalidStateError, match="waiting") as err:
        await app.ack(job_id)
    assert err.value.code == "INVALID_STATE" and err.value.http_status == 409
    assert (await app.get(job_id)).state is JobState.WAITING  # type: ignore[union-attr]


async def test_remove_on_complete_deletes_the_job(app: Conveyor) -> None:
    job_id = await app.push("q", "a", remove_on_complete=True)
    keep = await app.push("q", "b")
    await app.pull("q", 2)
    results = await app.ack_batch([{"id": job_id}, {"id": keep}])
    assert [r.ok for r in results] == [True, True]
    assert await app.get(job_id) is None
    assert (await app.get(keep)).state is JobState.COMPLETED  # type: ignore[union-attr]


async def test_ack_batch_reports_each_item(app: Conveyor) -> None:
    a, b, waiting = [await app.push("q", n) for n in "abc"]
    await app.pull("q", 2)
    missing = uuid4()
    results = await app.ack_batch(
        [{"id": str(a), "result": 1}, {"id": missing}, {"id": waiting}, {"id": "not-a-uuid"}, {"id": b}, {"id": a}]
    )
    assert [r.ok for r in results] == [True, False, False, False, True, False]
    codes = [r.error["code"] if r.error else None for r in results]
    assert codes == [None, "JOB_NOT_FOUND", "INVALID_STATE", "VALIDATION_ERROR", None, "INVALID_STATE"]
    assert "items[3].id" in results[3].error["message"]  # type: ignore[index]
    assert (await app.get(a)).result == 1  # type: ignore[union-attr]
    assert (await app.get(waiting)).state is JobState.WAITING  # type: ignore[union-attr]


# -- fail, backoff, DLQ ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [("fixed", [1000, 1000, 1000]), ("linear", [1000, 2000, 3000]), ("exponential", [1000, 2000, 4000])],
)
async def test_backoff_arithmetic(app: Conveyor, clock: FakeClock, backoff: str, expected: list[int]) -> None:
    job_id = await app.push("q", "flaky", max_attempts=4, backoff=backoff, backoff_delay_ms=1000)
    for attempt, delay in enumerate(expected, start=1):
        await pull_one(app)
        outcome = await app.fail(job_id, f"boom {attempt}")
        assert outcome.retry and outcome.will_retry and outcome.state is JobState.DELAYED
        assert outcome.next_attempt_at == ms_to_dt(clock.now + delay)
        job = await app.get(job_id)
        assert job and job.state is JobState.DELAYED and job.attempt == attempt and job.last_error == f"boom {attempt}"
        clock.advance(delay - 1)
        await app.run_maintenance()
        assert await app.pull("q") == []
        clock.advance(1)
        await app.run_maintenance()
    await pull_one(app)
    final = await app.fail(job_id, "last")
    assert (final.retry, final.will_retry, final.next_attempt_at, final.state) == (False, False, None, JobState.DLQ)
    job = await app.get(job_id)
    assert job and job.state is JobState.DLQ and job.attempt == 4 and job.last_error == "last"
    assert [j.id for j in await app.dlq("q")] == [job_id]


async def test_zero_backoff_retries_at_once(app: Conveyor) -> None:
    job_id = await app.push("q", "a", backoff_delay_ms=0)
    await pull_one(app)
    outcome = await app.fail(job_id, "x")
    assert outcome.state is JobState.WAITING and outcome.will_retry
    assert await pull_one(app) == job_id


async def test_single_attempt_goes_straight_to_dlq(app: Conveyor) -> None:
    job_id = await app.push("q", "a", max_attempts=1)
    await pull_one(app)
    assert (await app.fail(job_id, "fatal")).state is JobState.DLQ
    counts = await app.stats("q")
    assert (counts.dlq, counts.active, counts.waiting, counts.failed) == (1, 0, 0, 0)
    with pytest.raises(InvalidStateError):
        await app.fail(job_id, "again")


async def test_remove_on_fail_deletes_at_dlq(app: Conveyor) -> None:
    job_id = await app.push("q", "a", max_attempts=1, remove_on_fail=True)
    await pull_one(app)
    assert (await app.fail(job_id, "x")).state is JobState.DLQ
    assert await app.get(job_id) is None


async def test_dlq_listing_is_newest_first_with_limit(app: Conveyor, clock: FakeClock) -> None:
    ids = []
    for i in range(3):
        ids.append(await app.push("q", f"j{i}", max_attempts=1))
        await pull_one(app)
        await app.fail(ids[-1], f"e{i}")
        clock.advance(1)
    assert [j.id for j in await app.dlq("q")] == ids[::-1]
    assert [j.id for j in await app.dlq("q", limit=2, offset=1)] == ids[1::-1]
    assert await app.dlq("other") == []


# -- cancel, progress, heartbeat ---------------------------------------------------------------


async def test_cancel_only_before_start(app: Conveyor) -> None:
    waiting = await app.push("q", "a")
    delayed = await app.push("q", "b", delay_ms=1000)
    active = await app.push("q", "c")
    await app.pull("q", 1)  # a
    await app.cancel(delayed)
    assert (await app.get(delayed)).state is JobState.CANCELLED  # type: ignore[union-attr]
    with pytest.raises(InvalidStateError, match="active"):
        await app.cancel(waiting)  # it was pulled: active now
    await app.cancel(active)
    with pytest.raises(InvalidStateError, match="cancelled"):
        await app.cancel(active)
    with pytest.raises(JobNotFoundError):
        await app.cancel(uuid4())


async def test_progress_is_clamped_and_logged(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "a")
    with pytest.raises(InvalidStateError):
        await app.progress(job_id, 10)
    await pull_one(app)
    await app.progress(job_id, 50, "compiling 3 of 6")
    assert (await app.get(job_id)).progress == 50  # type: ignore[union-attr]
    await app.progress(job_id, 150)
    assert (await app.get(job_id)).progress == 100  # type: ignore[union-attr]
    clock.advance(5)
    await app.progress(job_id, -3, "rewind")
    job = await app.get(job_id)
    assert job and job.progress == 0
    assert [(e.message, e.timestamp) for e in job.logs] == [
        ("compiling 3 of 6", ms_to_dt(clock.now - 5)),
        ("rewind", ms_to_dt(clock.now)),
    ]


async def test_heartbeat_extends_the_lease(app: Conveyor, clock: FakeClock) -> None:
    job_id = await app.push("q", "a")
    with pytest.raises(InvalidStateError):
        await app.heartbeat(job_id)
    await pull_one(app)
    clock.advance(1234)
    await app.heartbeat(job_id)
    assert (await app.get(job_id)).last_heartbeat == ms_to_dt(clock.now)  # type: ignore[union-attr]


# -- batch push ----------------------------------------------------------------------------------


async def test_push_batch_returns_ids_in_order(app: Conveyor) -> None:
    ids = await app.push_batch(
        "q", [{"name": "a"}, {"name": "b", "options": {"priority": 1}}, {"name": "c", "queue": "other"}]
    )
    jobs = [await app.get(i) for i in ids]
    assert [(j.name, j.queue, j.priority) for j in jobs if j] == [("a", "q", 0), ("b", "q", 1), ("c", "other", 0)]


async def test_a_batch_of_plain_and_optioned_jobs_stores_each_exactly(app: Conveyor) -> None:
    """The insert binds only the columns some job of the batch fills: the others stay empty,
    and a column one job fills is stored for it and null for the rest."""
    full = {
        "name": "full", "data": {"x": 1}, "priority": 5, "tags": ["t"], "unique_key": "u", "metadata": {"m": 1},
        "ttl_ms": 60_000, "timeout_ms": 5_000, "custom_id": "c", "group_id": "g", "flow_id": "f", "lifo": True,
    }  # fmt: skip
    ids = await app.push_batch("q", [{"name": "plain"}, full, {"name": "plain2", "data": None}])
    ids += await app.push_batch("q", [{"name": "alone"}])
    plain1, job, plain2, alone = [await app.get(i) for i in ids]
    assert job is not None
    assert (job.data, job.priority, job.tags, job.unique_key, job.metadata) == ({"x": 1}, 5, ["t"], "u", {"m": 1})
    assert (job.ttl_ms, job.timeout_ms, job.custom_id, job.group_id, job.flow_id, job.lifo) == (
        60_000, 5_000, "c", "g", "f", True,
    )  # fmt: skip
    for plain in (plain1, plain2, alone):
        assert plain is not None
        assert (plain.data, plain.tags, plain.unique_key, plain.metadata, plain.ttl_ms, plain.timeout_ms) == (
            None, [], None, None, None, None,
        )  # fmt: skip
        assert (plain.custom_id, plain.group_id, plain.flow_id, plain.lifo, plain.priority) == (
            None,
            None,
            None,
            False,
            0,
        )


async def test_text_holding_a_lone_surrogate_is_refused_by_field(app: Conveyor) -> None:
    """JSON's \\u escapes can carry half a surrogate pair, which no database stores as text."""
    for call, field in [
        (lambda: app.push("q", "n", {"k": "\ud800"}), "data"),
        (lambda: app.push("q", "n", metadata={"k": "\udfff"}), "options.metadata"),
        (lambda: app.pull("q", worker_id="\ud800"), "worker_id"),
    ]:
        with pytest.raises(ValidationError, match="lone surrogate") as caught:
            await call()
        assert caught.value.field == field
    assert (await app.stats("q")).waiting == 0


async def test_push_batch_is_all_or_nothing(app: Conveyor) -> None:
    with pytest.raises(ValidationError, match=r"jobs\[2\]\.options\.priority"):
        await app.push_batch("q", [{"name": "a"}, {"name": "b"}, {"name": "c", "priority": "high"}])
    with pytest.raises(DuplicateKeyError, match="twice in this batch"):
        await app.push_batch("q", [{"name": "a", "unique_key": "k"}, {"name": "b", "unique_key": "k"}])
    await app.push("q", "holder", unique_key="held")
    with pytest.raises(DuplicateKeyError, match="held"):
        await app.push_batch("q", [{"name": "a"}, {"name": "b", "unique_key": "held"}])
    assert (await app.stats("q")).waiting == 1


# -- unique keys -----------------------------------------------------------------------------------


async def test_unique_key_is_held_while_pending(app: Conveyor) -> None:
    first = await app.push("q", "a", unique_key="order-42")
    with pytest.raises(DuplicateKeyError, match="order-42") as err:
        await app.push("q", "b", unique_key="order-42")
    assert err.value.code == "DUPLICATE_KEY" and err.value.http_status == 409
    await app.push("other-queue", "c", unique_key="order-42")  # keys are per queue
    await pull_one(app)
    with pytest.raises(DuplicateKeyError):
        await app.push("q", "b", unique_key="order-42")  # active still holds it
    await app.ack(first)
    second = await app.push("q", "b", unique_key="order-42")  # completed frees it
    assert second != first


# -- pause and queues ----------------------------------------------------------------------------


async def test_pause_rejects_pushes_and_stops_delivery(app: Conveyor) -> None:
    job_id = await app.push("q", "a")
    await app.pause("q")
    with pytest.raises(QueuePausedError) as err:
        await app.push("q", "b")
    assert err.value.http_status == 503
    with pytest.raises(QueuePausedError):
        await app.push_batch("q", [{"name": "c"}])
    assert await app.pull("q") == []
    assert [(q.name, q.paused) for q in await app.queues()] == [("q", True)]
    await app.resume("q")
    assert await pull_one(app) == job_id
    await app.push("q", "b")


async def test_queues_and_stats_count_by_state(app: Conveyor) -> None:
    await app.push_batch("a", [{"name": "x"}] * 3)
    await app.push("a", "later", delay_ms=1000)
    await app.push("b", "y")
    pulled = await app.pull("a")
    await app.ack(pulled[0].id)
    await app.pull("a")
    stats = await app.stats("a")
    assert (stats.waiting, stats.active, stats.delayed, stats.completed, stats.dlq) == (1, 1, 1, 1, 0)
    assert await app.stats("nobody") == type(stats)()
    assert [(q.name, q.counts.waiting) for q in await app.queues()] == [("a", 1), ("b", 1)]


# -- metadata survives everything -------------------------------------------------------------


async def test_metadata_survives_every_transition(app: Conveyor, clock: FakeClock) -> None:
    retried = await app.push("q", "a", metadata=META, backoff_delay_ms=0)
    await pull_one(app)
    await app.progress(retried, 10, "m")
    await app.heartbeat(retried)
    await app.fail(retried, "retry me")
    assert (await app.get(retried)).metadata == META  # type: ignore[union-attr]
    [again] = await app.pull("q")
    assert again.metadata == META
    await app.ack(retried, {"r": 1})
    cancelled = await app.push("q", "b", metadata=META)
    await app.cancel(cancelled)
    dead = await app.push("q", "c", metadata=META, max_attempts=1)
    await pull_one(app)
    await app.fail(dead, "x")
    for job_id in (retried, cancelled, dead):
        job = await app.get(job_id)
        assert job and job.metadata == META and job.to_wire()["metadata"] == META


# -- durability --------------------------------------------------------------------------------


async def test_everything_survives_reopen(storage_url: str, clock: FakeClock) -> None:
    if storage_url.endswith(":memory:"):
        pytest.skip("an in-memory database ends with its connection by design")
    async with Conveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as app:
        done = await app.push("q", "a", metadata=META)
        await app.pull("q")
        await app.ack(done, [1, 2])
        waiting = await app.push("q", "b", unique_key="u")
        await app.pause("q")
    async with Conveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as app:
        assert (await app.get(done)).result == [1, 2]  # type: ignore[union-attr]
        assert (await app.get(waiting)).state is JobState.WAITING  # type: ignore[union-attr]
        assert [q.paused for q in await app.queues()] == [True]
        await app.resume("q")
        with pytest.raises(DuplicateKeyError):  # the waiting job still holds its key
            await app.push("q", "c", unique_key="u")


async def test_times_are_utc_and_exact_to_the_millisecond(app: Conveyor, clock: FakeClock) -> None:
    clock.now = 1_799_999_999_999
    job = await app.get(await app.push("q", "a", delay_ms=1))
    assert job and job.created_at.utcoffset() == timedelta(0)
    assert job.delay_until == ms_to_dt(1_800_000_000_000)
    assert job.to_wire()["created_at"].endswith("Z") or job.to_wire()["created_at"].endswith("+00:00")
