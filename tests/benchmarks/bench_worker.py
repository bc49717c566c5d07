"""`conveyor worker` draining no-op Python tasks: jobs/s embedded (SQLite) and over TCP.

Not part of the test run. Numbers go to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_worker.py [--jobs 20000] [--concurrency 50]

20,000 jobs of a no-op `@app.task` are pushed (batches of 1,000), then one `conveyor worker`
process with the given concurrency drains them; the clock runs from the worker's start until
the queue's completed count reaches the total. Peers (pgqueuer, procrastinate) run the same
work when installed, and are skipped otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))
from bench_http import start_server  # noqa: E402

import conveyor  # noqa: E402

TASKS = """
import os, conveyor
app = conveyor.connect(os.environ["JOBS_URL"])

@app.task(queue="noop", name="noop")
async def noop(i: int) -> None:
    return None
"""


async def push(url: str, jobs: int) -> None:
    async with conveyor.connect(url) as q:
        for start in range(0, jobs, 1000):
            await q.push_batch(
                "noop", [{"name": "noop", "data": {"i": i}} for i in range(start, min(jobs, start + 1000))]
            )


async def completed(url: str) -> int:
    async with conveyor.connect(url, maintenance=False) as q:
        return (await q.stats("noop")).completed


def drain(workdir: Path, url: str, jobs: int, concurrency: int, extra: list[str]) -> float:
    env = {**os.environ, "JOBS_URL": url}
    start = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "tasks:app", "-c", str(concurrency), *extra],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while anyio.run(completed, url) < jobs:
            time.sleep(0.5)
        return jobs / (time.perf_counter() - start)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "tasks.py").write_text(TASKS)
        embedded = f"sqlite:///{workdir / 'embedded.db'}"
        anyio.run(push, embedded, args.jobs)
        rate = drain(workdir, embedded, args.jobs, args.concurrency, [])
        print(f"  worker | embedded SQLite, -c {args.concurrency:<3}    {rate:>8,.0f} jobs/s")
        proc, host, _ = start_server(f"sqlite:///{workdir / 'served.db'}")
        assert proc.stdout is not None
        tcp = "tcp://" + next(line for line in proc.stdout if "tcp listening" in line).split("tcp://")[1].strip()
        try:
            anyio.run(push, tcp, args.jobs)
            rate = drain(workdir, tcp, args.jobs, args.concurrency, ["--url", tcp])
            print(f"  worker | over TCP (SQLite server), -c {args.concurrency:<3} {rate:>8,.0f} jobs/s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        for peer in ("pgqueuer", "procrastinate"):
            if importlib.util.find_spec(peer) is None:
                print(f"  peer   | {peer}: not installed, skipped")


if __name__ == "__main__":
    main()
