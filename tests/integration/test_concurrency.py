"""Several processes claim from one queue: every job is claimed exactly once.

PostgreSQL: 4 claimer processes (``FOR UPDATE SKIP LOCKED``). SQLite: 2 processes on one file
(``BEGIN IMMEDIATE`` serializes their writers). Processes start together behind a go-file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conveyor import JobState, SyncConveyor

ROOT = Path(__file__).resolve().parents[2]


def race(url: str, processes: int, jobs: int, batch: int, tmp_path: Path) -> list[list[str]]:
    with SyncConveyor(url, maintenance=False, plugin_autoload=False) as app:
        for start in range(0, jobs, 500):
            app.push_batch("race", [{"name": "j", "data": i} for i in range(start, min(start + 500, jobs))])
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.claimer", url, "race", str(batch), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        go.touch()
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0] * processes
    return [json.loads(out.strip().splitlines()[-1]) for out in outputs]


def check_exactly_once(url: str, claims: list[list[str]], jobs: int) -> None:
    counts = Counter(job_id for claimed in claims for job_id in claimed)
    assert len(counts) == jobs, f"{jobs - len(counts)} jobs never claimed"
    assert max(counts.values()) == 1, f"claimed twice: {[i for i, n in counts.items() if n > 1][:5]}"
    assert sum(1 for claimed in claims if claimed) == len(claims), "every claimer should have won some jobs"
    with SyncConveyor(url, maintenance=False, plugin_autoload=False) as app:
        stats = app.stats("race")
        assert (stats.completed, stats.active, stats.waiting) == (jobs, 0, 0)
        assert all(app.get(i).state is JobState.COMPLETED for i in list(counts)[:50])  # type: ignore[union-attr]


def test_four_processes_claim_2000_postgres_jobs_exactly_once(pg_schema: str, tmp_path: Path) -> None:
    claims = race(pg_schema, processes=4, jobs=2000, batch=10, tmp_path=tmp_path)
    check_exactly_once(pg_schema, claims, 2000)


@pytest.mark.parametrize("batch", [1, 25])
def test_two_processes_claim_2000_sqlite_jobs_exactly_once(file_url: str, tmp_path: Path, batch: int) -> None:
    claims = race(file_url, processes=2, jobs=2000, batch=batch, tmp_path=tmp_path)
    check_exactly_once(file_url, claims, 2000)
