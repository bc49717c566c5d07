"""Core throughput: single push, batch push and drain (pull + ack in batches).

Not part of the test run. Prints jobs/s per backend; numbers go to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_core.py [--jobs N] [--backend sqlite|postgres|all] [--tune-gc]

``--tune-gc`` calls `conveyor.tune_gc()` first, as ``conveyor serve`` does for itself and as an
embedding application may (without it, Python's default garbage-collector settings).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import uuid

import anyio

from conveyor import Conveyor, tune_gc

PG_URL = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def single_push(app: Conveyor, n: int, concurrency: int) -> float:
    per_task = n // concurrency
    start = time.perf_counter()

    async def pusher(k: int) -> None:
        for i in range(per_task):
            await app.push("bench", "job", {"i": i, "k": k})

    async with anyio.create_task_group() as tg:
        for k in range(concurrency):
            tg.start_soon(pusher, k)
    return per_task * concurrency / (time.perf_counter() - start)


async def batch_push(app: Conveyor, n: int, batch: int) -> float:
    start = time.perf_counter()
    for offset in range(0, n, batch):
        await app.push_batch("bench", [{"name": "job", "data": {"i": offset + i}} for i in range(batch)])
    return n / (time.perf_counter() - start)


async def drain(app: Conveyor, n: int, batch: int, consumers: int = 1) -> float:
    done = 0
    start = time.perf_counter()

    async def consumer() -> None:
        nonlocal done
        while True:
            jobs = await app.pull("bench", batch)
            if not jobs:
                return
            await app.ack_batch([{"id": job.id, "result": None} for job in jobs])
            done += len(jobs)

    async with anyio.create_task_group() as tg:
        for _ in range(consumers):
            tg.start_soon(consumer)
    elapsed = time.perf_counter() - start
    assert done == n, f"drained {done} of {n}"
    return n / elapsed


def disk_baseline(directory: str, n: int = 2000) -> float:
    """Raw sqlite3 single-row commits/s with WAL + synchronous=FULL: what this disk allows today.

    This machine's fsync speed varies several-fold between runs, so every result is printed
    next to this number, measured in the same run."""
    import sqlite3

    conn = sqlite3.connect(f"{directory}/baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        conn.execute("COMMIT")
    conn.close()
    return n / (time.perf_counter() - start)


async def flow_fan_out(app: Conveyor, heads: int = 100, width: int = 100) -> tuple[float, float]:
    """A 10,000-job flow: ``heads`` head steps, each needed by ``width - 1`` leaves. Returns the
    seconds to submit it atomically and to run it to completion (pull + ack in batches of 100)."""
    steps = []
    for h in range(heads):
        steps.append({"key": f"h{h}", "queue": "flow", "name": "head"})
        steps += [{"key": f"h{h}.{k}", "queue": "flow", "name": "leaf", "needs": [f"h{h}"]} for k in range(width - 1)]
    start = time.perf_counter()
    await app.submit_flow({"flow_id": "fan-out", "steps": steps})
    submitted = time.perf_counter()
    while jobs := await app.pull("flow", 100):
        await app.ack_batch([{"id": job.id} for job in jobs])
    resolved = time.perf_counter()
    summary = (await app.flow("fan-out")).summary
    assert summary.total == summary.completed == heads * width, summary
    return submitted - start, resolved - submitted


async def run(url: str, label: str, n: int, **options: object) -> None:
    async with Conveyor(url, maintenance=False, plugin_autoload=False, **options) as app:
        seq = await single_push(app, n // 4, 1)
        conc = await single_push(app, n, 16)
        await drain(app, (await app.stats("bench")).waiting, 100)
        batched = await batch_push(app, n, 100)
        drained = await drain(app, n, 100)
        await batch_push(app, n, 100)
        drained4 = await drain(app, n, 100, consumers=4)
        await batch_push(app, n, 1000)
        drained_big = await drain(app, n, 1000)
        flow_submit, flow_run = await flow_fan_out(app)
    print(f"{label:>10} | single push, 1 client  {seq:9,.0f}/s")
    print(f"{label:>10} | single push, 16 tasks  {conc:9,.0f}/s")
    print(f"{label:>10} | batch push (100)       {batched:9,.0f}/s")
    print(f"{label:>10} | drain (pull+ack 100)   {drained:9,.0f}/s")
    print(f"{label:>10} | drain, 4 consumers     {drained4:9,.0f}/s")
    print(f"{label:>10} | drain (pull+ack 1000)  {drained_big:9,.0f}/s")
    print(f"{label:>10} | flow 100x100: submit {flow_submit:6.2f} s, run to completion {flow_run:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--backend", choices=["sqlite", "memory", "postgres", "all"], default="all")
    parser.add_argument("--tune-gc", action="store_true", help="call conveyor.tune_gc() first")
    args = parser.parse_args()
    if args.tune_gc:
        tune_gc()
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{'baseline':>10} | raw sqlite3 commits     {disk_baseline(tmp):9,.0f}/s  (WAL, synchronous=FULL, 1 row)"
        )
        if args.backend in ("sqlite", "all"):
            anyio.run(run, f"sqlite:///{tmp}/bench.db", "sqlite", args.jobs)
            print(f"{'':>10} | (same, sqlite_synchronous=NORMAL: no fsync per commit)")
            anyio.run(
                functools.partial(run, sqlite_synchronous="NORMAL"),
                f"sqlite:///{tmp}/normal.db",
                "sqlite-nrm",
                args.jobs,
            )
        if args.backend in ("memory", "all"):
            anyio.run(run, "sqlite:///:memory:", "memory", args.jobs)
    if args.backend in ("postgres", "all"):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        try:
            anyio.run(run, f"{PG_URL}?schema={schema}", "postgres", args.jobs)
        finally:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
