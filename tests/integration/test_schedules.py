"""Schedules on every backend: stored definitions, firing by the maintenance sweep (once per due
time, missed times not replayed), pause and resume, ``max_executions``, a paused queue, a unique
key still held, and bad definitions refused by field."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
import pytest

from conveyor import Conveyor, DuplicateKeyError, InvalidStateError, JobState, ScheduleNotFoundError, ValidationError
from conveyor.lifecycle import dt_to_ms, ms_to_dt

from ..conftest import FakeClock

pytestmark = pytest.mark.anyio

MINUTE = 60_000


async def fire(app: Conveyor, clock: FakeClock, advance_ms: int = 0) -> int:
    clock.advance(advance_ms)
    return (await app.run_maintenance()).fired


async def names_in(app: Conveyor, queue: str) -> list[str]:
    jobs = await app.pull(queue, 100)
    return [job.name for job in jobs]


async def test_every_ms_fires_at_once_then_every_interval(app: Conveyor, clock: FakeClock) -> None:
    created = await app.add_schedule({"name": "tick", "queue": "q", "job_name": "ping", "job_data": {"n": 1},
                                      "job_options": {"priority": 5, "tags": ["cron"]}, "every_ms": 10_000})  # fmt: skip
    assert created.next_run_at == ms_to_dt(clock.now) and created.execution_count == 0
    assert await fire(app, clock) == 1
    [job] = await app.pull("q")
    assert (job.name, job.data, job.priority, job.tags) == ("ping", {"n": 1}, 5, ["cron"])
    assert await fire(app, clock, 9_999) == 0  # not due yet
    assert await fire(app, clock, 1) == 1
    stored = await app.get_schedule("tick")
    assert stored.execution_count == 2 and stored.last_run_at == ms_to_dt(clock.now)
    assert stored.next_run_at == ms_to_dt(clock.now + 10_000)


async def test_cron_fires_at_matching_times_in_its_time_zone(app: Conveyor, clock: FakeClock) -> None:
    clock.now = dt_to_ms(datetime.fromisoformat("2026-03-28T08:30:00+00:00"))
    await app.add_schedule({"name": "paris-9am", "queue": "q", "job_name": "report", "cron_expr": "0 9 * * *",
                            "timezone": "Europe/Paris"})  # fmt: skip
    # 09:00 in Paris is 08:00 UTC before the DST change (29 March 2026), 07:00 UTC after it
    assert (await app.get_schedule("paris-9am")).next_run_at == datetime.fromisoformat("2026-03-29T07:00:00+00:00")
    await app.add_schedule({"name": "seconds", "queue": "s", "job_name": "j", "cron_expr": "*/15 * * * * *"})
    assert (await app.get_schedule("seconds")).next_run_at == datetime.fromisoformat("2026-03-28T08:30:15+00:00")
    assert await fire(app, clock, 14_999) == 0
    assert await fire(app, clock, 1) == 1
    assert await names_in(app, "s") == ["j"]


@pytest.mark.parametrize(
    "expr", ["0 12 * * 1", "0 0 12 * * 1", "0 0 12 * * MON", "0 0 12 * * 0", "0 0 12 * * 7", "0 0 12 * * SUN"]
)
async def test_weekdays_are_numbered_as_crontab_in_both_forms(app: Conveyor, clock: FakeClock, expr: str) -> None:
    """0 and 7 are Sunday and 1 is Monday with 5 fields and with 6 (as RustQueue's croner reads
    them; Quartz's 1 = Sunday is not used)."""
    clock.now = dt_to_ms(datetime.fromisoformat("2026-11-30T13:00:00+00:00"))  # a Monday, after noon
    await app.add_schedule({"name": "weekly", "queue": "q", "job_name": "j", "cron_expr": expr})
    next_run = (await app.get_schedule("weekly")).next_run_at
    assert next_run is not None
    assert next_run.strftime("%A %H:%M") == ("Monday 12:00" if expr.endswith(("1", "MON")) else "Sunday 12:00")
    assert next_run.date().isoformat() == ("2026-12-07" if expr.endswith(("1", "MON")) else "2026-12-06")


async def test_missed_due_times_fire_once_not_in_a_burst(app: Conveyor, clock: FakeClock) -> None:
    await app.add_schedule({"name": "m", "queue": "q", "job_name": "j", "every_ms": MINUTE})
    assert await fire(app, clock) == 1
    assert await fire(app, clock, 60 * MINUTE) == 1  # an hour without a sweep: one firing
    assert await fire(app, clock) == 0
    assert (await app.get_schedule("m")).next_run_at == ms_to_dt(clock.now + MINUTE)
    assert len(await app.pull("q", 100)) == 2


async def test_pause_resume_and_delete(app: Conveyor, clock: FakeClock) -> None:
    await app.add_schedule({"name": "p", "queue": "q", "job_name": "j", "every_ms": MINUTE})
    await app.pause_schedule("p")
    assert (await app.get_schedule("p")).paused is True
    assert await fire(app, clock, 5 * MINUTE) == 0
    await app.resume_schedule("p")
    assert await fire(app, clock) == 1  # the due time passed while paused fires once
    assert await fire(app, clock) == 0
    await app.remove_schedule("p")
    assert await app.schedules() == []
    for call in (app.get_schedule, app.remove_schedule, app.pause_schedule, app.resume_schedule):
        with pytest.raises(ScheduleNotFoundError, match="'p'"):
            await call("p")
    assert len(await app.pull("q", 100)) == 1  # its job stays


async def test_max_executions_pauses_the_schedule_for_good(app: Conveyor, clock: FakeClock) -> None:
    await app.add_schedule({"name": "twice", "queue": "q", "job_name": "j", "every_ms": 1_000, "max_executions": 2,
                            "job_options": {"unique_key": "k"}})  # fmt: skip
    assert await fire(app, clock) == 1
    assert await fire(app, clock, 1_000) == 0  # skipped (the key is held): not counted
    [job] = await app.pull("q")
    await app.ack(job.id)
    assert await fire(app, clock, 1_000) == 1
    done = await app.get_schedule("twice")
    assert (done.execution_count, done.paused) == (2, True)
    with pytest.raises(InvalidStateError, match="max_executions"):
        await app.resume_schedule("twice")
    assert await fire(app, clock, 10_000) == 0
    assert len(await app.pull("q", 100)) == 1


async def test_every_ms_keeps_its_cadence_when_a_sweep_is_late(app: Conveyor, clock: FakeClock) -> None:
    start = clock.now
    await app.add_schedule({"name": "c", "queue": "q", "job_name": "j", "every_ms": 1_000})
    assert await fire(app, clock, 1_500) == 1  # due at start, swept late
    assert (await app.get_schedule("c")).next_run_at == ms_to_dt(start + 2_000)
    assert await fire(app, clock, 3_700) == 1  # due at +2,000; +3,000..+5,000 missed and skipped
    assert (await app.get_schedule("c")).next_run_at == ms_to_dt(start + 6_000)


@pytest.mark.parametrize(
    ("day", "fires_at_utc"),
    [
        ("2026-10-25", ["2026-10-25T00:30:00+00:00"]),  # clocks go back at 03:00: 02:30 occurs twice
        ("2026-03-29", ["2026-03-29T01:00:00+00:00"]),  # clocks go forward at 02:00: 02:30 never occurs,
        # and fires as the gap ends (03:00 CEST), not at 03:30
    ],
)
async def test_a_cron_time_fires_once_on_the_nights_the_clocks_change(
    app: Conveyor, clock: FakeClock, day: str, fires_at_utc: list[str]
) -> None:
    clock.now = dt_to_ms(datetime.fromisoformat(f"{day}T00:00:00+02:00"))
    await app.add_schedule({"name": "night", "queue": "q", "job_name": "j", "cron_expr": "30 2 * * *",
                            "timezone": "Europe/Paris"})  # fmt: skip
    fired_at = []
    for _ in range(6 * 12):  # every five minutes through the night
        if await fire(app, clock, 5 * MINUTE):
            fired_at.append(ms_to_dt(clock.now).isoformat())
    assert [t[:16] for t in fired_at] == [t[:16] for t in fires_at_utc]
    assert (await app.get_schedule("night")).execution_count == 1


async def test_schedules_held_by_a_paused_queue_do_not_hold_up_the_others(app: Conveyor, clock: FakeClock) -> None:
    await app.pause("held")
    for i in range(3):
        await app.add_schedule({"name": f"h{i}", "queue": "held", "job_name": "j", "every_ms": MINUTE})
    clock.advance(1)
    await app.add_schedule({"name": "free", "queue": "q", "job_name": "j", "every_ms": MINUTE})
    assert await app.fire_schedules(clock.now, 2) == 1  # a limit of 2 still reaches "free"
    assert [j.name for j in await app.pull("q", 10)] == ["j"]


async def test_a_paused_queue_holds_the_firing_until_it_resumes(app: Conveyor, clock: FakeClock) -> None:
    await app.add_schedule({"name": "held", "queue": "q", "job_name": "j", "every_ms": MINUTE})
    await app.pause("q")
    assert await fire(app, clock) == 0
    held = await app.get_schedule("held")
    assert held.execution_count == 0 and held.next_run_at == ms_to_dt(clock.now)  # still due
    await app.resume("q")
    assert await fire(app, clock, 1) == 1
    assert len(await app.pull("q", 100)) == 1


async def test_a_unique_key_still_held_skips_the_run(app: Conveyor, clock: FakeClock) -> None:
    """The previous run has not finished: the next one is skipped, not queued behind it."""
    spec = {"name": "u", "queue": "q", "job_name": "j", "every_ms": MINUTE, "job_options": {"unique_key": "one"}}
    await app.add_schedule(spec)
    assert await fire(app, clock) == 1
    assert await fire(app, clock, MINUTE) == 0  # skipped: the first job still holds the key
    skipped = await app.get_schedule("u")
    assert skipped.execution_count == 1 and skipped.next_run_at == ms_to_dt(clock.now + MINUTE)  # not counted
    [job] = await app.pull("q")
    await app.ack(job.id)
    assert await fire(app, clock, MINUTE) == 1  # the key is free again
    assert [j.state for j in await app.pull("q", 10)] == [JobState.ACTIVE]


async def test_many_due_schedules_fire_together_in_few_commits(app: Conveyor, clock: FakeClock) -> None:
    """Each firing is its own transaction on a shared storage, but the firings of one sweep run
    at once: on SQLite they share group commits (one fsync each) instead of one commit apiece."""
    for i in range(300):
        await app.add_schedule({"name": f"s{i:03}", "queue": "q", "job_name": f"j{i:03}", "every_ms": MINUTE})
    groups: list[int] = []
    queue = getattr(app.storage, "_groups", None)
    if queue is not None:  # count the transactions the firings were committed in
        commit = queue._commit

        async def counted(group: list[Any]) -> Any:
            groups.append(len(group))
            return await commit(group)

        queue._commit = counted
    assert await app.fire_schedules(clock.now, 1000) == 300
    if queue is not None:
        queue._commit = commit
        # the due query, the firings in one or two groups (PostgreSQL's hold 256), a last read
        assert len(groups) <= 4 and sum(groups) >= 301, groups
    assert [job.name for job in await app.pull("q", 300)] == [f"j{i:03}" for i in range(300)]  # schedules' order
    assert {s.execution_count for s in await app.schedules()} == {1}


async def test_a_schedule_that_cannot_fire_is_logged_once_a_minute_and_holds_up_no_other(
    app: Conveyor, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A stored job that no longer validates (written by hand, or by an older version) stays
    due; the sweep says so once a minute, not on every pass, and fires the other schedules."""
    good = await app.add_schedule({"name": "good", "queue": "q", "job_name": "j", "every_ms": 1_000})
    broken = good.model_copy(update={"name": "broken", "job_options": {"priority": "high"}})
    await app.storage.insert_schedule(broken)
    with caplog.at_level("ERROR", logger="conveyor"):
        fired = [await fire(app, clock, step) for step in (0, 1_000, 1_000, 58_000)]
    assert fired == [1, 1, 1, 1]  # "good", every time
    logged = [r for r in caplog.records if "schedule broken could not fire" in r.getMessage()]
    assert len(logged) == 2  # at 0 s and at 60 s, not on the two passes between
    assert "options.priority" in str(logged[0].exc_info[1] if logged[0].exc_info else "")
    assert (await app.get_schedule("broken")).execution_count == 0


async def test_schedules_survive_reopen_and_names_are_unique(storage_url: str, clock: FakeClock) -> None:
    if storage_url == "sqlite:///:memory:":
        pytest.skip("an in-memory database ends with its connection by design")
    async with Conveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as app:
        await app.add_schedule({"name": "keep", "queue": "q", "job_name": "j", "cron_expr": "*/5 * * * *",
                                "job_data": [1, "é"], "max_executions": 9})  # fmt: skip
        with pytest.raises(DuplicateKeyError, match="'keep' already exists"):
            await app.add_schedule({"name": "keep", "queue": "other", "job_name": "j", "every_ms": 1})
        before = await app.get_schedule("keep")
    async with Conveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as app:
        assert await app.schedules() == [before]


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"every_ms": 1, "cron_expr": "* * * * *"}, "cron_expr", "exactly one"),
    ({}, "cron_expr", "exactly one"),
    ({"cron_expr": "61 * * * *"}, "cron_expr", "not a valid cron"),
    ({"cron_expr": "* * *"}, "cron_expr", "3 fields"),
    ({"every_ms": 0}, "every_ms", "greater than or equal to 1"),
    ({"cron_expr": "0 9 * * *", "timezone": "Mars/Olympus"}, "timezone", "not a known IANA"),
    ({"every_ms": 1, "name": "bad name"}, "name", "invalid"),
    ({"every_ms": 1, "queue": ""}, "queue", "invalid"),
    ({"every_ms": 1, "job_options": {"priority": "high"}}, "job_options.priority", "integer"),
    ({"every_ms": 1, "job_options": {"tags": ["x" * 300]}}, "job_options.tags[0]", "limit"),
    ({"every_ms": 1, "job_data": {"x": "y" * (1024 * 1024)}}, "job_data", "limit"),
    ({"every_ms": 1, "job_name": ""}, "job_name", "at least 1 character"),
    ({"every_ms": 1, "max_executions": 0}, "max_executions", "greater than or equal to 1"),
    ({"every_ms": 1, "colour": "red"}, "colour", "unknown field"),
    ({"cron_expr": "0 0 30 2 *"}, "cron_expr", "never matches"),
    ({"cron_expr": "R * * * *"}, "cron_expr", "random"),
    ({"cron_expr": "0 H * * *"}, "cron_expr", "hashed"),
    ({"cron_expr": "0 9 * * *", "timezone": "America"}, "timezone", "not a known IANA"),
    ({"cron_expr": "0 9 * * *", "timezone": "localtime"}, "timezone", "not a known IANA"),
    ({"cron_expr": "0 9 * * *", "timezone": "x" * 300}, "timezone", "not a known IANA"),
    ({"every_ms": 1, "timezone": "UTC"}, "timezone", "cron_expr only"),
    ({"every_ms": 1, "max_executions": 2**63}, "max_executions", "less than or equal"),
    ({"every_ms": 1, "name": ".."}, "name", "only dots"),
    (
        {"every_ms": 1, "job_options": {"depends_on": ["01a229c9-6e1c-75a0-aec8-25ba3cdb5332"]}},
        "job_options.depends_on",
        "cannot depend",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("change", "field", "message"), BAD)
async def test_a_bad_schedule_is_refused_by_field_and_nothing_is_stored(
    app: Conveyor, change: dict[str, Any], field: str, message: str
) -> None:
    spec = {"name": "s", "queue": "q", "job_name": "j", **change}
    with pytest.raises(ValidationError, match=message) as refused:
        await app.add_schedule(spec)
    assert refused.value.field == field
    if field.startswith("job_"):  # pydantic's list of errors names the schedule's fields too
        assert all(error["field"].startswith("job_") for error in refused.value.details.get("errors", []))
    assert await app.schedules() == []


async def test_two_nodes_sweeping_at_once_fire_each_due_time_once(storage_url: str, clock: FakeClock) -> None:
    if storage_url == "sqlite:///:memory:":
        pytest.skip("an in-memory database is one process's alone")
    async with (
        Conveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as a,
        Conveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as b,
    ):
        await a.add_schedule({"name": "shared", "queue": "q", "job_name": "j", "every_ms": MINUTE})

        async def sweep(node: Conveyor, fired: list[int]) -> None:
            fired.append(await node.fire_schedules(clock.now, 100))

        for _ in range(3):
            fired: list[int] = []
            async with anyio.create_task_group() as tg:
                for node in (a, b, a, b):
                    tg.start_soon(sweep, node, fired)
            assert sum(fired) == 1
            clock.advance(MINUTE)
        assert len(await b.pull("q", 100)) == 3
        assert (await b.get_schedule("shared")).execution_count == 3
