"""``conveyor worker TARGET``: run the tasks of ``module:app`` (and every installed engine)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from ._gc import tune_gc
from .client import connect
from .errors import ValidationError
from .runner import WorkerRunner

log = logging.getLogger("conveyor.worker")


def add_parser(commands: Any) -> None:
    worker = commands.add_parser(
        "worker", help="run jobs: the tasks of TARGET and every installed engine",
        description="Pull jobs and run them until SIGINT/SIGTERM, then finish or release the running ones.",
    )  # fmt: skip
    worker.add_argument("target", help="module:attribute of the app whose @app.task handlers to run")
    worker.add_argument(
        "--queue", "-q", action="append", dest="queues", help="queue to serve (repeatable; default: the tasks' queues)"
    )
    worker.add_argument("--concurrency", "-c", type=int, default=10, help="jobs at once (default 10)")
    worker.add_argument("--url", help="run against this server or storage instead of the app's own")
    worker.add_argument("--token", help="bearer token for --url")
    worker.add_argument("--worker-id", help="name reported with claims (default host:pid)")
    worker.add_argument("--heartbeat-s", type=float, help="heartbeat interval (default: a third of the stall timeout)")
    worker.add_argument("--grace-s", type=float, default=30.0, help="on SIGTERM, how long running jobs may finish")
    worker.add_argument("--poll-ms", type=int, default=1000, help="long-poll wait per pull (default 1000)")


def load_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValidationError(f"target {target!r} must be module:attribute, e.g. myapp.tasks:app", field="target")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import-time failure is the target's problem
        raise ValidationError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}", field="target"
        ) from None
    app = getattr(module, attribute, None)
    if app is None or not hasattr(app, "tasks"):
        raise ValidationError(f"{target!r} is not a Conveyor app (from conveyor.connect or Conveyor)", field="target")
    return app


async def run(args: argparse.Namespace) -> int:
    declared = load_target(args.target)
    app = connect(args.url, token=args.token) if args.url else declared
    if app is not declared:
        app.use_tasks(declared.tasks)
    async with app:
        tune_gc()  # start-up is done: what is alive now stays
        queues = args.queues or declared.tasks.queues
        if not queues:
            raise ValidationError("no queue to serve: pass --queue or register a task", field="queue")
        for queue in declared.tasks.queues:
            if app.workers.routed(queue) is None:
                app.workers.route_queue_to_engine(queue, "python")
        settings = getattr(app, "settings", None)
        heartbeat_s = args.heartbeat_s or (settings.stall_timeout_ms / 3000 if settings else 10.0)
        runner = WorkerRunner(
            app, queues, concurrency=args.concurrency, worker_id=args.worker_id,
            heartbeat_s=heartbeat_s, poll_ms=args.poll_ms, grace_s=args.grace_s,
        )  # fmt: skip
        log.info("worker %s: queues %s, concurrency %d, engines %s", runner.worker_id, ", ".join(queues),
                 args.concurrency, ", ".join(app.workers.engines))  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, runner, tg.cancel_scope)
            await runner.run()
            tg.cancel_scope.cancel()
        log.info(
            "worker stopped: %d completed, %d failed, %d released", runner.completed, runner.failed, runner.released
        )
    return 0


async def _stop_on_signal(runner: WorkerRunner, everything: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info(
                "%s: no more pulls; finishing running jobs (send it again to release them now)",
                signal.Signals(signum).name,
            )
            runner.stop()
            break
        async for _ in signals:
            runner.stop_now()
            return
