"""What event sinks cost the queue: push and drain rates with sinks off, with the built-in
sinks (metrics, webhooks, WebSocket hub), with a webhook to a fast receiver, and with a webhook
to a dead receiver (accepts connections, never answers).

Not part of the test run; numbers go to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_events.py [--jobs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from conveyor import Conveyor  # noqa: E402
from tests.benchmarks.bench_core import drain, single_push  # noqa: E402

CONFIGS = ("sinks off", "built-in sinks", "webhook, fast receiver", "webhook, dead receiver")


async def measure(url: str, config: str, n: int, receiver_url: str | None) -> tuple[float, float, dict[str, Any]]:
    options: dict[str, Any] = {"maintenance": False, "plugin_autoload": False}
    if config == "sinks off":
        options["disable_plugins"] = ["metrics", "webhooks", "http"]
    async with Conveyor(url, **options) as app:
        if receiver_url is not None:
            await app.add_webhook({"url": receiver_url, "secret": "bench"})
        pushed = await single_push(app, n, 16)
        drained = await drain(app, (await app.stats("bench")).waiting, 100)
        stats = {"event_drops": app.events.dropped}
        for sink in app.events.sinks:
            if getattr(sink, "name", "") == "webhooks":
                stats.update(pending=sink.pending, webhook_drops=sink.dropped)  # type: ignore[attr-defined]
    return pushed, drained, stats


RECEIVERS = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.webhook_receiver import Receiver
fast, dead = Receiver(), Receiver()
dead.hold()
with fast, dead:
    print(fast.url, dead.url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    print(len(fast.received), dead.held, flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    # The receivers run in a process of their own, as real ones would: in this process they
    # would compete with the queue for the interpreter lock.
    receivers = subprocess.Popen(
        [sys.executable, "-c", RECEIVERS, str(ROOT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert receivers.stdout is not None and receivers.stdin is not None
    fast_url, dead_url = receivers.stdout.readline().split()
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):  # interleaved: this machine's disk speed drifts
            for index, config in enumerate(CONFIGS):
                url = f"sqlite:///{tmp}/r{round_no}c{index}.db"
                target = {2: fast_url, 3: dead_url}.get(index)
                started = time.perf_counter()
                pushed, drained, stats = anyio.run(measure, url, config, args.jobs, target)
                print(
                    f"round {round_no} | {config:<24} | single push (16 tasks) {pushed:7,.0f}/s"
                    f" | drain (pull+ack 100) {drained:7,.0f}/s | {stats}"
                    f" | {time.perf_counter() - started:5.1f} s"
                )
    receivers.stdin.close()
    got, held = receivers.stdout.readline().split()
    receivers.wait()
    print(f"fast receiver got {got} requests; dead receiver held {held} without answering")


if __name__ == "__main__":
    main()
