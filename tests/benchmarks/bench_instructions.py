"""Instructions a real ``conveyor serve`` spends per job on the TCP batched cycle (valgrind).

Not part of the test run. Numbers go to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_instructions.py [--batch 50] [--jobs 2000 6000] [--split]

Wall-clock and CPU time on this VM drift 2-4x between hours, which hides a 10% change. The count
of executed instructions does not drift: the server runs under ``valgrind --tool=callgrind``
while one connection pushes the jobs in batches (``push_batch``), then pulls and acks them
(``pull`` count=batch, ``ack_batch``), one request in flight, so every run does the same work.
Two runs with different job counts go side by side; the difference of their totals divided by
the difference of their job counts is the cost per job, with start-up and shutdown cancelled
out. Compare two commits by running this script from each (each needs its own install).
``--split`` also runs pushes only, then pushes and pulls, and reports what a job costs to push,
to pull and to ack (three times the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PUSH, PULL, ACK = 1, 2, 3


def server_instructions(jobs: int, batch: int, stages: int = ACK) -> int:
    """Instructions the whole server process executed, start to exit, for ``jobs`` jobs taken
    through the first ``stages`` of push, pull and ack."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "callgrind.log"
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log}",
                   sys.executable, "-m", "conveyor", "serve", "--storage", f"sqlite:///{tmp}/bench.db",
                   "--http-port", "0", "--tcp-port", "0"]  # fmt: skip
        env = {**os.environ, "CONVEYOR_TCP_IDLE_TIMEOUT_S": "3600", "CONVEYOR_TCP_REQUEST_TIMEOUT_S": "3600"}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        port = next(int(m.group(1)) for line in proc.stdout if (m := re.search(r"tcp://[^\s]+:(\d+)", line)))
        try:
            asyncio.run(_cycle(port, jobs, batch, stages))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(600)
        found = re.search(r"Collected : (\d+)", log.read_text())
        if found is None:
            raise SystemExit(f"callgrind reported no total:\n{log.read_text()[-2000:]}")
        return int(found.group(1))


async def _cycle(port: int, jobs: int, batch: int, stages: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)

    async def call(request: dict[str, object]) -> dict[str, object]:
        writer.write(json.dumps(request).encode() + b"\n")
        reply = json.loads(await reader.readline())
        if not reply["ok"]:
            raise RuntimeError(reply)
        return reply

    for i in range(jobs // batch):
        await call(
            {"cmd": "push_batch", "queue": "q", "jobs": [{"name": "j", "data": i * batch + k} for k in range(batch)]}
        )
    while stages >= PULL and (got := (await call({"cmd": "pull", "queue": "q", "count": batch}))["jobs"]):
        assert isinstance(got, list)
        if stages >= ACK:
            await call({"cmd": "ack_batch", "items": [{"id": j["id"], "result": j["data"]} for j in got]})
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--jobs", type=int, nargs=2, default=[2000, 6000], metavar=("FEW", "MANY"))
    parser.add_argument("--split", action="store_true", help="also cost a push, a pull and an ack apart")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed")
    subprocess.run([sys.executable, "-c", "import conveyor.cli, conveyor.plugins.sql.sqlite, conveyor.plugins.tcp"],
                   check=True)  # fmt: skip  # compile the bytecode first: neither run should pay for it
    few, many = args.jobs
    per_job: dict[int, float] = {}
    for stages in (PUSH, PULL, ACK) if args.split else (ACK,):
        with ThreadPoolExecutor(2) as pool:
            low, high = pool.map(server_instructions, (few, many), (args.batch,) * 2, (stages,) * 2)
        per_job[stages] = (high - low) / (many - few)
    print(f"batches of {args.batch}: {per_job[ACK]:,.0f} instructions per job "
          f"(server totals {low:,} for {few} jobs, {high:,} for {many})")  # fmt: skip
    if args.split:
        print(f"  push {per_job[PUSH]:,.0f}, pull {per_job[PULL] - per_job[PUSH]:,.0f}, "
              f"ack {per_job[ACK] - per_job[PULL]:,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
