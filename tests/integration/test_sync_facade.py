"""`SyncConveyor` blocks on the same API, and its background loop keeps maintenance running."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conveyor import InvalidStateError, JobState, SyncConveyor

from ..conftest import FakeClock


def test_sync_facade_runs_the_lifecycle(storage_url: str, clock: FakeClock) -> None:
    with SyncConveyor(storage_url, clock=clock, maintenance=False, plugin_autoload=False) as app:
        job_id = app.push("q", "a", {"x": 1}, priority=2)
        [job] = app.pull("q")
        assert job.id == job_id and job.data == {"x": 1}
        app.heartbeat(job_id)
        app.progress(job_id, 30, "m")
        with pytest.raises(InvalidStateError):
            app.cancel(job_id)
        assert app.fail(job_id, "e").will_retry
        clock.advance(1_000)
        app.call(app.app.run_maintenance)
        [again] = app.pull("q")
        assert [r.ok for r in app.ack_batch([{"id": again.id, "result": 2}])] == [True]
        assert app.get(job_id).state is JobState.COMPLETED  # type: ignore[union-attr]
        app.pause("q")
        assert app.queues()[0].paused and app.stats("q").completed == 1 and app.dlq("q") == []
        app.resume("q")
        assert app.push_batch("q", [{"name": "b"}])


def test_sync_facade_needs_opening() -> None:
    app = SyncConveyor("sqlite:///:memory:", plugin_autoload=False)
    with pytest.raises(RuntimeError, match="not open"):
        app.push("q", "a")
    app.close()  # closing an unopened facade is harmless


def test_a_facade_left_open_is_closed_at_exit_and_its_job_kept(tmp_path: Path) -> None:
    db = tmp_path / "open.db"
    script = (
        "import sys\nfrom conveyor import SyncConveyor\n"
        "app = SyncConveyor(sys.argv[1], plugin_autoload=False).open()\n"
        "print(app.push('q', 'left-open'))\n"
    )
    # the timeout only guards against the hang this test is about
    done = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{db}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert not Path(f"{db}-wal").exists()  # storage was closed, not abandoned
    with SyncConveyor(f"sqlite:///{db}", plugin_autoload=False, maintenance=False) as app:
        job = app.get(done.stdout.strip())
        assert job is not None and job.name == "left-open" and job.state is JobState.WAITING


def test_a_facade_left_open_and_collected_stops_its_thread() -> None:
    before = set(threading.enumerate())
    app = SyncConveyor("sqlite:///:memory:", plugin_autoload=False).open()
    app.push("q", "a")
    started = set(threading.enumerate()) - before
    assert started
    del app
    gc.collect()
    for thread in started:
        thread.join(60)  # a hang guard: the thread ends as soon as the facade is closed
        assert not thread.is_alive()
