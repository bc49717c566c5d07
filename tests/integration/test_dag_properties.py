"""Property test of DAG flows (hypothesis): random graphs of up to 50 jobs, each job's outcome
random (ack, or fail into the DLQ). Whatever happens, every job ends terminal, no job runs
before all its parents completed, and every descendant of a dead job is dead-lettered."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import JobState, SyncConveyor

from ..conftest import PG_URL, require_postgres

MAX_DEPTH = 10


@st.composite
def dags(draw: Any) -> tuple[list[list[int]], list[bool]]:
    n = draw(st.integers(1, 50))
    parents: list[list[int]] = []
    depth: list[int] = []
    for i in range(n):
        eligible = [j for j in range(i) if depth[j] < MAX_DEPTH]
        chosen = sorted(draw(st.sets(st.sampled_from(eligible), max_size=3))) if eligible else []
        parents.append(chosen)
        depth.append(1 + max((depth[j] for j in chosen), default=-1))
    succeeds = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return parents, succeeds


def check(url: str, graph: tuple[list[list[int]], list[bool]]) -> None:
    parents, succeeds = graph
    n = len(parents)
    steps = [
        {"key": f"s{i}", "queue": "q", "name": f"s{i}", "data": i, "needs": [f"s{j}" for j in ps], "max_attempts": 1}
        for i, ps in enumerate(parents)
    ]
    with SyncConveyor(url, maintenance=False, plugin_autoload=False) as app:
        ids = app.submit_flow({"flow_id": "prop", "steps": steps}).ids
        index = {ids[f"s{i}"]: i for i in range(n)}
        ran: set[int] = set()
        while jobs := app.pull("q", 7):
            for job in jobs:
                i = index[job.id]
                for p in parents[i]:
                    parent = app.get(ids[f"s{p}"])
                    assert parent is not None and parent.state is JobState.COMPLETED, f"s{i} ran before s{p} completed"
                ran.add(i)
                if succeeds[i]:
                    app.ack(job.id, i)
                else:
                    app.fail(job.id, f"s{i} failed")
        expected: list[JobState] = []
        for i in range(n):
            alive = succeeds[i] and all(expected[p] is JobState.COMPLETED for p in parents[i])
            expected.append(JobState.COMPLETED if alive else JobState.DLQ)
        status = app.flow("prop")
        final = {index[j.id]: j for j in status.jobs}
        assert len(final) == n and status.summary.total == n
        for i in range(n):
            job = final[i]
            assert job.state is expected[i], f"s{i}: {job.state} != {expected[i]} (parents {parents[i]})"
            runnable = all(expected[p] is JobState.COMPLETED for p in parents[i])
            assert (i in ran) == runnable, f"s{i} ran={i in ran} but its parents allow it: {runnable}"
            if not runnable:
                assert job.last_error and "dependency" in job.last_error


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(dags())
def test_random_dags_on_sqlite(graph: tuple[list[list[int]], list[bool]]) -> None:
    check("sqlite:///:memory:", graph)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(dags())
def test_random_dags_on_postgres(graph: tuple[list[list[int]], list[bool]]) -> None:
    require_postgres()
    schema = f"p_{uuid.uuid4().hex[:12]}"
    try:
        check(f"{PG_URL}?schema={schema}", graph)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
