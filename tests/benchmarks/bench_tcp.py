"""TCP end to end: a real ``conveyor serve`` process and the line protocol.

Not part of the test run. Numbers go to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_tcp.py [--jobs N] [--backend sqlite|postgres] [--connections 1 4 16]

Batched: ``push_batch`` of 50, then ``pull`` count 50 + ``ack_batch`` of 50 until drained, with
each number of connections given (default 1 and 4); reported as jobs/s for the push phase, the drain phase, and the whole
cycle (every job pushed, pulled and acked: jobs / (push time + drain time)), with the server
process's CPU per job in each phase (Linux); then 2 producer
and 2 worker connections at once (jobs / time from first push to last ack). Single ops: one
job per request (push, pull, ack) from 16 connections. Then the batched cycle again through
the Python client (`conveyor.connect("tcp://...")`), to show what the library costs. The raw
client is minimal asyncio streams with pipelining off (one request in flight per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_http import start_server  # noqa: E402

import conveyor  # noqa: E402

PG_URL = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 50


class Line:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Line:
        return cls(*await asyncio.open_connection(host, port, limit=16 * 1024 * 1024))

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.writer.write(json.dumps(request).encode() + b"\n")
        reply = json.loads(await self.reader.readline())
        if not reply["ok"]:
            raise RuntimeError(reply)
        return reply


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def batched(conns: list[Line], jobs: int, queue: str, pid: int) -> tuple[float, float, float, float]:
    """Seconds to push ``jobs`` in batches, then to drain them; and the server's CPU seconds
    in each phase (CPU per job is steadier than wall time on a VM whose speed varies)."""
    per = jobs // len(conns) // BATCH

    async def push(c: Line) -> None:
        for i in range(per):
            await c.call(
                {
                    "cmd": "push_batch",
                    "queue": queue,
                    "jobs": [{"name": "j", "data": i * BATCH + k} for k in range(BATCH)],
                }
            )

    async def drain(c: Line) -> None:
        while got := (await c.call({"cmd": "pull", "queue": queue, "count": BATCH}))["jobs"]:
            await c.call({"cmd": "ack_batch", "items": [{"id": j["id"], "result": j["data"]} for j in got]})

    cpu, t = server_cpu_s(pid), time.perf_counter()
    await asyncio.gather(*(push(c) for c in conns))
    cpu_push, pushed = server_cpu_s(pid) - cpu, time.perf_counter() - t
    cpu, t = server_cpu_s(pid), time.perf_counter()
    await asyncio.gather(*(drain(c) for c in conns))
    return pushed, time.perf_counter() - t, cpu_push, server_cpu_s(pid) - cpu


async def concurrent(producers: list[Line], consumers: list[Line], jobs: int, queue: str) -> float:
    """Producers push batches while consumers pull and ack them: jobs/s from the first push to
    the last ack (how a deployment runs; the phases above run one after the other)."""
    per = jobs // len(producers) // BATCH
    acked = 0

    async def push(c: Line) -> None:
        for i in range(per):
            batch = [{"name": "j", "data": i * BATCH + k} for k in range(BATCH)]
            await c.call({"cmd": "push_batch", "queue": queue, "jobs": batch})

    async def work(c: Line) -> None:
        nonlocal acked
        while acked < per * BATCH * len(producers):
            got = (await c.call({"cmd": "pull", "queue": queue, "count": BATCH, "wait_ms": 100}))["jobs"]
            if got:
                await c.call({"cmd": "ack_batch", "items": [{"id": j["id"], "result": j["data"]} for j in got]})
                acked += len(got)

    t = time.perf_counter()
    await asyncio.gather(*(push(c) for c in producers), *(work(c) for c in consumers))
    return acked / (time.perf_counter() - t)


async def single(conns: list[Line], jobs: int, queue: str) -> dict[str, float]:
    per = jobs // len(conns)
    ids: list[str] = []

    async def phase(op: Any) -> float:
        t = time.perf_counter()
        await asyncio.gather(*(op(c, k) for k, c in enumerate(conns)))
        return per * len(conns) / (time.perf_counter() - t)

    async def push(c: Line, k: int) -> None:
        for i in range(per):
            ids.append((await c.call({"cmd": "push", "queue": queue, "name": "j", "data": i}))["id"])

    async def pull(c: Line, k: int) -> None:
        for _ in range(per):
            await c.call({"cmd": "pull", "queue": queue})

    async def ack(c: Line, k: int) -> None:
        for job_id in ids[k * per : (k + 1) * per]:
            await c.call({"cmd": "ack", "id": job_id})

    return {"push": await phase(push), "pull": await phase(pull), "ack": await phase(ack)}


async def library(url: str, jobs: int, queue: str) -> tuple[float, float]:
    async with conveyor.connect(url) as q:
        t = time.perf_counter()
        for i in range(jobs // BATCH):
            await q.push_batch(queue, [{"name": "j", "data": i * BATCH + k} for k in range(BATCH)])
        pushed = time.perf_counter() - t
        t = time.perf_counter()
        while got := await q.pull(queue, BATCH):
            await q.ack_batch([{"id": j.id, "result": j.data} for j in got])
        return pushed, time.perf_counter() - t


def report(label: str, jobs: int, pushed: float, drained: float, *cpu: float) -> None:
    server = f"  server CPU {cpu[0] / jobs * 1e6:.0f} + {cpu[1] / jobs * 1e6:.0f} µs/job" if cpu else ""
    print(f"  {label:<26} push {jobs / pushed:>8,.0f}/s  drain {jobs / drained:>8,.0f}/s  "
          f"cycle {jobs / (pushed + drained):>8,.0f} jobs/s{server}")  # fmt: skip


async def run(storage: str, jobs: int, connections: list[int]) -> None:
    proc, host, _ = start_server(storage)
    assert proc.stdout is not None
    tcp = next(line for line in proc.stdout if "tcp listening" in line).split("tcp://")[1].strip()
    port = int(tcp.rsplit(":", 1)[1])
    try:
        for n in connections:
            conns = [await Line.open(host, port) for _ in range(n)]
            queue = f"b{n}-{uuid.uuid4().hex[:6]}"
            report(f"batches of {BATCH}, {n} conn", jobs, *await batched(conns, jobs, queue, proc.pid))
        conns = [await Line.open(host, port) for _ in range(4)]
        rate = await concurrent(conns[:2], conns[2:], jobs, f"c-{uuid.uuid4().hex[:6]}")
        print(f"  concurrent, 2 push + 2 work  {rate:>8,.0f} jobs/s pushed, pulled and acked")
        conns = [await Line.open(host, port) for _ in range(16)]
        rates = await single(conns, min(jobs, 8000), f"s-{uuid.uuid4().hex[:6]}")
        print("  single ops, 16 conns       " + "  ".join(f"{k} {v:,.0f}/s" for k, v in rates.items()))
        report(f"python client, batches {BATCH}", jobs, *await library(f"tcp://{host}:{port}", jobs, "lib"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4], help="batched runs, one per count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend == "postgres":
            storage = f"{PG_URL}?schema=bench_{uuid.uuid4().hex[:8]}"
        else:
            storage = f"sqlite:///{tmp}/bench.db"
        print(f"storage: {storage}")
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(run(storage, args.jobs, args.connections))


if __name__ == "__main__":
    main()
