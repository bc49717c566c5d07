"""Pure kernel pieces: backoff, error codes, ids, the row codec and settings."""

from __future__ import annotations

import json
import os
import time
import uuid
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import anyio
import pytest
from pydantic_core import to_json

from conveyor import (
    Backoff,
    ConveyorError,
    DuplicateKeyError,
    InvalidStateError,
    JobNotFoundError,
    JobSpec,
    LimitExceededError,
    ParseError,
    QueuePausedError,
    RateLimitedError,
    ScheduleNotFoundError,
    Settings,
    UnauthorizedError,
    UnknownCommandError,
    ValidationError,
    WebhookNotFoundError,
    error_for_code,
)
from conveyor._ids import uuid7
from conveyor.lifecycle import MAX_BACKOFF_MS, backoff_ms, dt_to_ms, ms_to_dt
from conveyor.models import normalize_event_name


@pytest.mark.parametrize(
    ("strategy", "attempts", "expected"),
    [
        (Backoff.FIXED, [1, 2, 5], [500, 500, 500]),
        (Backoff.LINEAR, [1, 2, 5], [500, 1000, 2500]),
        (Backoff.EXPONENTIAL, [1, 2, 3, 10], [500, 1000, 2000, 256_000]),
    ],
)
def test_backoff_formulas(strategy: Backoff, attempts: list[int], expected: list[int]) -> None:
    assert [backoff_ms(strategy, 500, a) for a in attempts] == expected


def test_backoff_is_capped() -> None:
    assert backoff_ms(Backoff.EXPONENTIAL, 86_400_000, 999) == MAX_BACKOFF_MS
    assert backoff_ms(Backoff.LINEAR, 86_400_000, 1000) == MAX_BACKOFF_MS


WIRE = [
    (JobNotFoundError, "JOB_NOT_FOUND", 404), (ScheduleNotFoundError, "SCHEDULE_NOT_FOUND", 404),
    (WebhookNotFoundError, "WEBHOOK_NOT_FOUND", 404), (InvalidStateError, "INVALID_STATE", 409),
    (DuplicateKeyError, "DUPLICATE_KEY", 409), (QueuePausedError, "QUEUE_PAUSED", 503),
    (RateLimitedError, "RATE_LIMITED", 429), (UnauthorizedError, "UNAUTHORIZED", 401),
    (ValidationError, "VALIDATION_ERROR", 400), (LimitExceededError, "VALIDATION_ERROR", 413),
    (ParseError, "PARSE_ERROR", 400), (UnknownCommandError, "UNKNOWN_COMMAND", 400),
    (ConveyorError, "INTERNAL_ERROR", 500),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "code", "status"), WIRE)
def test_error_codes_and_statuses_round_trip(cls: type[ConveyorError], code: str, status: int) -> None:
    err = cls("it broke", details={"field": "x"})
    assert (err.code, err.http_status) == (code, status)
    assert err.to_wire() == {"code": code, "message": "it broke", "details": {"field": "x"}}
    rebuilt = error_for_code(code, "it broke", {"field": "x"}, http_status=status)
    assert type(rebuilt) is cls and rebuilt.message == "it broke"


def test_uuid7_is_version_7_and_monotonic() -> None:
    from conveyor._ids import uuid7s

    ids = [uuid7() for _ in range(2000)] + uuid7s(1000) + [uuid7() for _ in range(1000)] + uuid7s(1000)
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 5000
    assert all(uuid.UUID(str(i)) == i and hash(i) == hash(uuid.UUID(str(i))) for i in ids[:100])
    now_ms = time.time_ns() // 1_000_000
    assert all(now_ms - 60_000 < i.int >> 80 <= now_ms + 5 for i in (ids[0], ids[-1]))  # unix ms on top


def test_uuid7_random_bits_differ_in_a_forked_child() -> None:
    """Random bits are drawn from a pool: a child forked with the pool half used must not
    repeat the ids its parent makes next."""
    uuid7()  # the pool is filled now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, uuid7().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.waitpid(pid, 0)
    os.close(read)
    ours = uuid7()
    assert child.int & ((1 << 62) - 1) != ours.int & ((1 << 62) - 1)


def test_millisecond_times_round_trip_exactly() -> None:
    for ms in (0, 1, 1_799_999_999_999, 1_800_000_000_001, 4_102_444_800_123):
        assert dt_to_ms(ms_to_dt(ms)) == ms


def test_event_names_accept_snake_case() -> None:
    assert normalize_event_name("job_completed") == "job.completed"
    assert normalize_event_name("job.dlq") == "job.dlq"
    with pytest.raises(ValueError, match="unknown event"):
        normalize_event_name("job.exploded")


def test_row_codec_round_trips_every_field() -> None:
    from datetime import timedelta

    from conveyor import Job, JobState
    from conveyor.models import LogEntry as Log
    from conveyor.plugins.sql.codec import decode_job, encode_job, render_job
    from conveyor.plugins.sql.dialect import COLUMNS, POSTGRES, SQLITE

    now = ms_to_dt(1_800_000_000_123)
    job = Job(
        id=uuid7(), custom_id="c", name="n", queue="q", data={"a": [1, "é"]}, result=[None], state=JobState.ACTIVE,
        progress=42, logs=[Log(timestamp=now, message="m")], priority=-3, delay_until=now, created_at=now,
        updated_at=now + timedelta(milliseconds=1), started_at=now, completed_at=None, max_attempts=5, attempt=2,
        backoff=Backoff.LINEAR, backoff_delay_ms=10, last_error="e", ttl_ms=100, timeout_ms=200, unique_key="u",
        tags=["t"], group_id="g", metadata={"follow": True}, depends_on=[uuid7()], flow_id="f", lifo=True,
        remove_on_complete=True, remove_on_fail=False, worker_id="w", last_heartbeat=now,
    )  # fmt: skip
    for dialect in (SQLITE, POSTGRES):
        row = encode_job(job, dialect)
        assert len(row) == len(COLUMNS)
        assert decode_job(row, dialect) == job
        assert isinstance(decode_job(row, dialect).id, UUID)
        # rendered straight from the row, or through the model when it has log entries
        for variant in (job, job.model_copy(update={"logs": [], "metadata": None, "completed_at": now})):
            rendered = render_job(encode_job(variant, dialect), dialect)
            assert json.dumps(json.loads(rendered)) == json.dumps(json.loads(to_json(variant)))  # types too
            assert ("metadata" in json.loads(rendered)) is (variant.metadata is not None)


def test_rendered_rows_match_the_model_with_each_optional_field_set_alone() -> None:
    """`render_job` writes the usual job (every optional field empty) from a shorter template:
    a job with any one of them set must take the full one, and both must agree with pydantic."""
    from conveyor import Job, JobState
    from conveyor.plugins.sql.codec import encode_job, render_job
    from conveyor.plugins.sql.dialect import POSTGRES, SQLITE

    now = ms_to_dt(1_800_000_000_000)
    bare = Job(id=uuid7(), name="n", queue="q", data={"a": 1}, state=JobState.ACTIVE, created_at=now, updated_at=now,
               started_at=now, last_heartbeat=now)  # fmt: skip
    alone = {
        "custom_id": "c", "result": {"r": [1]}, "delay_until": now, "completed_at": now, "last_error": "e",
        "ttl_ms": 5, "timeout_ms": 6, "unique_key": "u", "tags": ["t"], "group_id": "g", "metadata": {"m": 1},
        "depends_on": [uuid7()], "flow_id": "f", "lifo": True, "remove_on_complete": True, "remove_on_fail": True,
        "worker_id": "w", "started_at": None, "last_heartbeat": None, "data": None,
    }  # fmt: skip
    for variant in [bare, *(bare.model_copy(update={key: value}) for key, value in alone.items())]:
        for dialect in (SQLITE, POSTGRES):
            rendered = render_job(encode_job(variant, dialect), dialect)
            assert json.dumps(json.loads(rendered)) == json.dumps(json.loads(to_json(variant))), variant


def test_inserts_bind_what_varies_and_write_usual_values_as_constants() -> None:
    from conveyor.jobs import JobBuilder
    from conveyor.plugins.sql.codec import encode_job
    from conveyor.plugins.sql.dialect import POSTGRES, SQLITE, Dialect
    from conveyor.plugins.sql.inserts import insert_statements

    builder = JobBuilder(64)

    def row(item: dict[str, object], dialect: Dialect = SQLITE, now_ms: int = 1_800_000_000_000) -> tuple[object, ...]:
        job, data_text = builder.build_item("q", item, now_ms)
        return encode_job(job, dialect, data_text)

    rows = [row({"name": "j", "data": i}) for i in range(50)]
    statements = list(insert_statements(SQLITE, rows))
    # 50 rows: 32, 16 and 2 to a statement (row counts are powers of two: few statement texts)
    assert [sql.count("(?") for sql, _ in statements] == [32, 16, 2]
    assert [len(params) for _, params in statements] == [7 * 32, 7 * 16, 7 * 2]  # 7 of 36 columns bound
    sql = statements[2][0]
    assert sql.startswith("INSERT INTO conveyor_jobs (id, name, queue, data, order_key, created_at, updated_at, state,")
    assert "'waiting', 0, 0, 3, 0, 'exponential', 1000, FALSE, FALSE, FALSE)" in sql
    assert statements[0][1][:8] == [rows[0][0], "j", "q", "0", *[1_800_000_000_000] * 3, rows[1][0]]
    # one row off the usual value: that column is bound for the whole batch
    rows = [row({"name": "j", "data": i}, POSTGRES) for i in range(50)]
    rows[7] = row({"name": "j", "priority": 1, "lifo": True}, POSTGRES)
    sql, params = next(insert_statements(POSTGRES, rows))
    assert "priority" in sql.split("VALUES")[0] and "%s" in sql and "?" not in sql
    # priority and lifo bound, not inline; PostgreSQL takes all 50 rows in one statement (a round trip each)
    assert len(params) == 50 * 9 and "TRUE" not in sql
    # a batch too big for one statement: at most CHUNK values each
    many = [row({"name": "j"}) for _ in range(1000)]
    assert [len(p) // 6 for _, p in insert_statements(SQLITE, many)] == [64] * 15 + [32, 8]


def test_json_text_is_written_as_it_is_where_other_strings_are_quoted() -> None:
    from conveyor import wire

    job_id = uuid7()
    reply = {"ok": True, "jobs": wire.JsonText('[{"id":1},{"é":"\\n"}]'), "label": '[{"id":1}]', "id": job_id}
    assert (
        wire.encode(reply)
        == f'{{"ok":true,"jobs":[{{"id":1}},{{"é":"\\n"}}],"label":"[{{\\"id\\":1}}]","id":"{job_id}"}}'.encode()
    )
    assert json.loads(wire.encode(reply))["jobs"] == [{"id": 1}, {"é": "\n"}]
    assert wire.encode({"ok": True, "job": None}) == b'{"ok":true,"job":null}'
    # stored JSON written pretty by something other than the kernel cannot split a TCP reply
    assert (
        wire.encode({"ok": True, "job": wire.JsonText('{\n  "a": [1,\r\n 2]\n}')}) == b'{"ok":true,"job":{"a":[1,2]}}'
    )


def test_a_storage_without_its_own_claim_jobs_json_serializes_the_claimed_jobs() -> None:
    """A third-party backend implements only `claim_jobs`; the protocols' pull still works."""
    import asyncio

    from conveyor import Job, JobState
    from conveyor.storage import Storage

    now = ms_to_dt(1_800_000_000_123)
    jobs = [
        Job(id=uuid7(), name=f"j{i}", queue="q", state=JobState.ACTIVE, created_at=now, updated_at=now)
        for i in range(2)
    ]

    class Claims:
        async def claim_jobs(self, queue: str, count: int, now_ms: int, worker_id: str | None) -> list[Job]:
            assert (queue, count, now_ms, worker_id) == ("q", 2, 5, "w")
            return jobs

    texts = asyncio.run(Storage.claim_jobs_json(Claims(), "q", 2, 5, "w"))  # type: ignore[arg-type]
    assert texts == [to_json(job).decode() for job in jobs]


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_STORAGE", "sqlite:///x.db")
    monkeypatch.setenv("CONVEYOR_STALL_TIMEOUT_MS", "1500")
    settings = Settings()
    assert (settings.storage, settings.stall_timeout_ms) == ("sqlite:///x.db", 1500)
    with pytest.raises(Exception, match="stall_timeout_ms"):
        Settings(stall_timeout_ms=1)


def test_job_spec_accepts_nested_or_flat_options() -> None:
    nested = JobSpec.parse({"name": "a", "options": {"priority": 3}})
    flat = JobSpec.parse({"name": "a", "priority": 3})
    assert nested == flat and flat.options.priority == 3


@pytest.mark.parametrize(
    "body",
    [{"name": "j"}, {"name": "j", "data": {"a": [1, None]}}, {"queue": "q", "name": "j", "data": "x"}],
)
def test_a_bare_job_body_parses_as_validation_would(body: dict[str, object]) -> None:
    from conveyor._limits import parse
    from conveyor.models import JobSpec

    fast, validated = JobSpec.parse(body), parse(JobSpec, body)
    assert fast.model_dump() == validated.model_dump()
    assert fast.model_fields_set == validated.model_fields_set  # clients send only what was given
    assert fast.options.model_fields_set == validated.options.model_fields_set == set()
    assert fast.options.tags is not JobSpec.parse(body).options.tags  # no list shared between specs


@pytest.mark.parametrize("body", [{"name": "j"}, {"name": "j", "data": [1]}, {"name": "j", "priority": 0}])
def test_a_job_with_default_options_is_built_as_the_full_path_builds_it(body: dict[str, object]) -> None:
    from conveyor.jobs import JobBuilder, _job_values
    from conveyor.models import Job, JobSpec

    spec = JobSpec.parse(body)
    fast, _ = JobBuilder(max_dag_depth=8).build("q", spec, 1_800_000_000_123)
    full = Job.trusted({**_job_values("q", spec, 1_800_000_000_123), "id": fast.id})
    assert fast.__dict__ == full.__dict__ and list(fast.__dict__) == list(full.__dict__)
    assert fast.model_fields_set == full.model_fields_set
    again, _ = JobBuilder(max_dag_depth=8).build("q", spec, 1_800_000_000_123)
    assert again.id != fast.id
    assert all(again.__dict__[k] is not fast.__dict__[k] for k in ("logs", "tags", "depends_on"))  # own lists


@pytest.mark.parametrize(
    "body", [{"name": ""}, {"name": 3}, {"queue": 5, "name": "j"}, {"data": 1}, {"name": "\ud800"}]
)
def test_a_bad_bare_job_body_is_refused_by_field(body: dict[str, object]) -> None:
    from conveyor.errors import ValidationError
    from conveyor.models import JobSpec

    with pytest.raises(ValidationError) as caught:
        JobSpec.parse(body)
    assert caught.value.field in ("name", "queue")


def test_tune_gc_freezes_the_start_up_heap_and_raises_only_the_first_threshold() -> None:
    import gc

    from conveyor import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(5000)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (5000, *before[1:])
        with pytest.raises(ValueError, match="positive"):
            tune_gc(0)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    "text",
    [
        "0190a8c2-7b3e-7c1d-8e2f-123456789abc", "0190A8C2-7B3E-7C1D-8E2F-123456789ABC",
        "urn:12345678123412341234123456789abc", "{12345678-1234-1234-1234-1234567890}",
        "12345678-1234-1234-1234-12345678901g", " 2345678-1234-1234-1234-123456789012",
        "+2345678-1234-1234-1234-123456789012", "1_345678-1234-1234-1234-123456789012",
        "1234567812341234123412345678----", "0190a8c27b3e7c1d8e2f123456789abc", "x" * 36, "",
        "0190a8c2-7b3e-7c1d-8e2f-123456789abc\n", "\uff10190a8c2-7b3e-7c1d-8e2f-123456789abc",
        "0190a8c2-7b3e-7c1d-8e2f-123456789aBc", "0190a8c2-7b3e-7c1d-8e2f_123456789abc",
    ],
)  # fmt: skip
def test_job_ids_parse_exactly_as_uuid_does(text: str) -> None:
    """`check_job_id` has a fast path for canonical ids; it accepts and refuses what
    ``uuid.UUID`` does, and makes an equal, equally hashed UUID. `canonical_job_id` takes
    exactly the texts ``str()`` of a UUID writes, and makes the same UUID."""
    from conveyor._limits import canonical_job_id, check_job_id
    from conveyor.errors import ValidationError

    canonical = canonical_job_id(text)
    try:
        as_written = str(UUID(text)) == text
    except ValueError:
        as_written = False
    assert (canonical is not None) == as_written
    if canonical is not None:
        assert (canonical, hash(canonical), type(canonical)) == (UUID(text), hash(UUID(text)), UUID)

    try:
        expected: UUID | None = UUID(text)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValidationError, match="must be a job UUID"):
            check_job_id(text)
    else:
        parsed = check_job_id(text)
        assert (parsed, str(parsed), hash(parsed)) == (expected, str(expected), hash(expected))


@pytest.mark.parametrize("depth", [201, 5000])
def test_json_nested_past_the_limit_is_refused_by_field(depth: int) -> None:
    """201 levels is caught by the parser's limit; 5,000 already by the serializer's recursion."""
    from conveyor._limits import MAX_JSON_DEPTH, check_json_bytes
    from conveyor.errors import LimitExceededError

    value: object = 1
    for _ in range(depth):
        value = {"k": value}
    with pytest.raises(LimitExceededError, match=f"deeper than {MAX_JSON_DEPTH} levels") as caught:
        check_json_bytes("result", value, 1 << 20)
    assert caught.value.field == "result"
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH):
        nested = [nested]
    assert check_json_bytes("result", nested, 1 << 20).startswith("[[")


@pytest.mark.parametrize(
    "value",
    [7, -1, 2**70, 1.5, 1e-7, 0.1, None, True, False, "é\u2028\"", [], {}, [1, [2, {"b": None}]],
     {"a": [1, "é", None, 1.5], "z": {"n": -0.0}}, {1: "int key"}, ("a", 1)],
)  # fmt: skip
def test_stored_json_is_what_json_dumps_makes(value: object) -> None:
    from conveyor._limits import dumps

    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_stored_json_refuses_what_is_not_json() -> None:
    from conveyor._limits import check_json_bytes
    from conveyor.errors import ValidationError

    for bad in (float("nan"), {"a": [float("inf")]}, {"a": object()}):
        with pytest.raises(ValidationError) as caught:
            check_json_bytes("data", bad, 1 << 20)
        assert caught.value.field == "data" and "not JSON-serializable" in caught.value.message
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(ValidationError, match="Circular reference") as caught:
        check_json_bytes("data", cyclic, 1 << 20)
    assert caught.value.field == "data"


@pytest.mark.parametrize(
    ("value", "key"),
    [({1: "a", "1": "b"}, "1"), ([{"k": {None: 0, "null": 1}}], "null"), ({"t": {"true": 0, True: 1}}, "true"),
     ({1.5: 0, "1.5": 1}, "1.5"), ({-3: 0, "-3": 1}, "-3")],
)  # fmt: skip
def test_keys_that_collide_once_json_makes_them_strings_are_refused(value: object, key: str) -> None:
    """json writes ``{1: "a", "1": "b"}`` with the key "1" twice; reading it back keeps one."""
    from conveyor._limits import check_json_bytes
    from conveyor.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        check_json_bytes("data", value, 1 << 20)
    assert caught.value.field == "data" and f"two keys that both become {key!r}" in caught.value.message


@pytest.mark.parametrize(
    "value", [{1: "a", 2: "b"}, {"1": "a", "k": {"2": 1}}, {"s": '"1":'}, {None: 1, True: 2, 1.5: 3}, [{"-1": 0}]]
)
def test_keys_that_stay_distinct_in_json_are_kept(value: object) -> None:
    from conveyor._limits import check_json_bytes

    assert check_json_bytes("data", value, 1 << 20) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_a_cyclic_value_is_refused_even_with_a_raised_recursion_limit() -> None:
    """Without cycle markers the C encoder would recurse until the C stack overflows (Python
    3.11 bounds it by the Python recursion limit): a crash of the whole process."""
    import subprocess
    import sys

    script = (
        "import sys; sys.setrecursionlimit(1_000_000)\n"
        "from conveyor._limits import check_json_bytes\n"
        "from conveyor.errors import ValidationError\n"
        "c = {}; c['self'] = c\n"
        "try:\n    check_json_bytes('data', c, 1 << 20)\nexcept ValidationError as e:\n    print(e.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-500:]
    assert "Circular reference" in done.stdout


def test_a_build_error_is_located_in_a_batch_and_keeps_its_cause_outside_one() -> None:
    from conveyor.errors import ValidationError
    from conveyor.jobs import JobBuilder

    builder = JobBuilder(max_dag_depth=8)
    for body in ({"name": "j", "data": float("nan")}, {"name": "j", "data": float("nan"), "priority": 1}):
        with pytest.raises(ValidationError) as alone:
            builder.build_item("q", body, 0)
        assert alone.value.field == "data" and isinstance(alone.value.__cause__, ValueError)
        with pytest.raises(ValidationError) as in_batch:
            builder.build_item("q", body, 0, "jobs[2]")
        assert in_batch.value.field == "jobs[2].data" and in_batch.value.message.startswith("jobs[2].data")


def test_a_wire_code_the_kernel_does_not_know_keeps_its_code_and_status() -> None:
    from conveyor.errors import ConveyorError, JobNotFoundError, error_for_code

    route = error_for_code("NOT_FOUND", "no route GET /x", {}, 404)
    assert (route.code, route.http_status, type(route).__name__) == ("NOT_FOUND", 404, "NotFoundError")
    assert isinstance(route, ConveyorError) and type(error_for_code("NOT_FOUND", "again", {}, 404)) is type(route)
    assert type(error_for_code("JOB_NOT_FOUND", "gone")) is JobNotFoundError
    assert error_for_code("not a code!", "x").code == "INTERNAL_ERROR"


@pytest.mark.anyio
async def test_tcp_replies_reach_the_calls_behind_one_cancelled_as_its_turn_to_read_came() -> None:
    """Waiting calls read a connection's replies in turn: one woken to read that leaves
    (cancelled) must pass the turn on, or the calls behind it wait out their timeout with
    their replies already read into the buffer."""
    from conveyor.client._tcp import _Connection

    class Stream:  # a socket whose reads come from a memory channel
        def __init__(self) -> None:
            self.tx, self.rx = anyio.create_memory_object_stream[bytes](10)

        async def send(self, data: bytes) -> None:
            pass

        async def receive(self, n: int) -> bytes:
            return await self.rx.receive()

        def extra(self, attr: object, default: object = None) -> object:
            return default

        async def aclose(self) -> None:
            pass

    stream = Stream()
    conn = _Connection(stream, "fake", 5, lambda c: None)  # type: ignore[arg-type]
    first, second, third = [await conn.send(b"x\n") for _ in range(3)]
    scopes: list[anyio.CancelScope] = []

    async def wait(pending: Any) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await conn.wait(pending)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, first)
            await anyio.sleep(0.01)
            tg.start_soon(wait, second)
            tg.start_soon(wait, third)
            await anyio.sleep(0.01)
            stream.tx.send_nowait(b'{"ok":true}\n{"ok":true}\n{"ok":true}\n')
            scopes[1].cancel()  # the second call gives up just as the first hands it the turn
    assert first.done and third.done


@pytest.mark.anyio
async def test_a_sync_task_cancelled_before_its_thread_started_is_not_counted_as_running() -> None:
    from conveyor.tasks import IN_THREADS, Task

    ran: list[int] = []
    task = Task(None, lambda: ran.append(1), "q", "n", False, {})
    job = SimpleNamespace(id=uuid.uuid4(), data=None)
    with anyio.CancelScope() as scope:
        scope.cancel()  # the worker's grace ended as the job started
        await task.run(job, None)  # type: ignore[arg-type]
    assert not ran and job.id not in IN_THREADS
