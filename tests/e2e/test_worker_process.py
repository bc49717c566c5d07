"""``conveyor worker`` as a real process: SIGKILL mid-job (redelivered after the stall
timeout, completed once), SIGTERM (drains: finishes or releases), and over TCP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import conveyor
from conveyor import JobState

from .conftest import serve

TASKS = """
import os, pathlib, time
import anyio, conveyor

app = conveyor.connect(os.environ["JOBS_URL"])
RUNS = pathlib.Path(os.environ["RUNS_DIR"])

@app.task(queue="work", name="work")
async def work(key: str, seconds: float = 0) -> str:
    runs = RUNS / key
    runs.mkdir(exist_ok=True)
    attempt = len([p for p in runs.iterdir() if p.name.isdigit()]) + 1
    (runs / str(attempt)).touch()
    if key.startswith("hang") and attempt == 1:
        await anyio.sleep(3600)  # the first run hangs: its worker is killed
    await anyio.sleep(seconds)
    (runs / f"{attempt}-returned").touch()
    if key.startswith("unstorable"):
        return {"not JSON": object()}
    return f"{key} done on run {attempt}"
"""


def start_worker(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "tasks:app", *args], cwd=cwd, env={**child_env, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def wait_for(check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "tasks.py").write_text(TASKS)
    (tmp_path / "runs").mkdir()
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {"JOBS_URL": url, "RUNS_DIR": str(tmp_path / "runs"), "CONVEYOR_STALL_TIMEOUT_MS": "1000",
           "CONVEYOR_MAINTENANCE_INTERVAL_MS": "100"}  # fmt: skip
    return tmp_path, env


async def defer(url: str, **kwargs: Any) -> Any:
    async with conveyor.connect(url) as q:
        return await q.push("work", "work", kwargs)


async def job(url: str, job_id: Any) -> Any:
    async with conveyor.connect(url, maintenance=False) as q:
        return await q.get(job_id)


def test_a_killed_worker_s_job_is_redelivered_and_completes_once(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    job_id = anyio.run(lambda: defer(env["JOBS_URL"], key="hang-1"))
    first = start_worker(cwd, "-c", "2", env=env)
    wait_for(lambda: (cwd / "runs" / "hang-1" / "1").exists())
    first.kill()  # SIGKILL: no chance to release anything
    first.wait(30)
    second = start_worker(cwd, "-c", "2", env=env)
    try:
        wait_for(lambda: anyio.run(job, env["JOBS_URL"], job_id).state is JobState.COMPLETED)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    done = anyio.run(job, env["JOBS_URL"], job_id)
    assert done.result == "hang-1 done on run 2" and done.attempt == 1  # the stall counted one attempt
    started = sorted(p.name for p in (cwd / "runs" / "hang-1").iterdir() if p.name.isdigit())
    assert started == ["1", "2"]  # ran twice, completed once


def test_sigterm_finishes_short_jobs_and_releases_long_ones(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    short = anyio.run(lambda: defer(env["JOBS_URL"], key="short", seconds=1.0))
    long = anyio.run(lambda: defer(env["JOBS_URL"], key="long", seconds=3600))
    worker = start_worker(cwd, "-c", "4", "--grace-s", "2", env=env)
    wait_for(lambda: (cwd / "runs" / "short").exists() and (cwd / "runs" / "long").exists())
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    output = worker.stdout.read() if worker.stdout else ""
    assert "1 completed, 0 failed, 1 released" in output, output
    assert anyio.run(job, env["JOBS_URL"], short).result == "short done on run 1"
    released = anyio.run(job, env["JOBS_URL"], long)
    assert released.state is JobState.WAITING and released.attempt == 0  # back in line, nothing lost


def test_a_worker_over_tcp(project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    served = serve(env["JOBS_URL"])
    try:
        tcp = served.addresses["tcp"]
        ids = [anyio.run(lambda k=k: defer(tcp, key=f"tcp-{k}")) for k in range(5)]
        worker = start_worker(cwd, "--url", tcp, "-c", "3", env=env)
        try:
            wait_for(lambda: all(anyio.run(job, tcp, i).state is JobState.COMPLETED for i in ids))
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0
        assert anyio.run(job, tcp, ids[0]).result == "tcp-0 done on run 1"
    finally:
        assert served.stop() == 0, served.output


def test_over_tcp_a_result_the_queue_refuses_fails_its_job_alone(project: tuple[Path, dict[str, str]]) -> None:
    """The client refuses a batch whose item cannot be sent: the worker acks the others one by
    one and fails that job, naming why (it used to leave the whole batch to stall)."""
    cwd, env = project
    served = serve(env["JOBS_URL"])
    try:
        tcp = served.addresses["tcp"]

        async def push_all() -> tuple[Any, list[Any]]:
            async with conveyor.connect(tcp) as q:
                odd = await q.push("work", "work", {"key": "unstorable-1", "seconds": 0.5}, max_attempts=1)
                return odd, [await q.push("work", "work", {"key": f"ok-{k}", "seconds": 0.5}) for k in range(5)]

        odd, good = anyio.run(push_all)
        worker = start_worker(cwd, "--url", tcp, "-c", "10", env=env)
        try:
            wait_for(lambda: anyio.run(job, tcp, odd).state is JobState.DLQ)
            wait_for(lambda: all(anyio.run(job, tcp, i).state is JobState.COMPLETED for i in good))
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(60) == 0
        refused = anyio.run(job, tcp, odd)
        assert refused.last_error.startswith("the result was refused:") and "JSON" in refused.last_error
        assert not (cwd / "runs" / "unstorable-1" / "2").exists()  # failed once, not run again after a stall
    finally:
        assert served.stop() == 0, served.output


def test_an_ack_lost_to_a_server_restart_is_sent_again(project: tuple[Path, dict[str, str]]) -> None:
    """The server is away when a job's ack is due and comes back on the same port: the worker
    sends the ack again (the job heartbeated meanwhile) and the job completes, run once."""
    cwd, env = project
    env = {**env, "CONVEYOR_STALL_TIMEOUT_MS": "30000"}
    served = serve(env["JOBS_URL"], env=env)
    port = served.addresses["tcp"].rsplit(":", 1)[1]
    tcp = served.addresses["tcp"]
    job_id = anyio.run(lambda: defer(tcp, key="survivor", seconds=3))
    worker = start_worker(cwd, "--url", tcp, "-c", "2", env=env)
    again = None
    try:
        wait_for(lambda: (cwd / "runs" / "survivor" / "1").exists())
        assert served.stop() == 0, served.output  # the job is still running in the worker
        wait_for(lambda: (cwd / "runs" / "survivor" / "1-returned").exists())
        time.sleep(1)  # its ack fails against no server, and waits to be sent again
        again = serve(env["JOBS_URL"], "--tcp-port", port, env=env)
        wait_for(lambda: anyio.run(job, tcp, job_id).state is JobState.COMPLETED)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        if again is not None:
            assert again.stop() == 0, again.output
    done = anyio.run(job, env["JOBS_URL"], job_id)
    assert done.result == "survivor done on run 1" and done.attempt == 0
