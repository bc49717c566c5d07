"""``conveyor push|get|stats|queues|dlq|pause|resume|flow``: a queue reached by URL.

``--url`` (or ``CONVEYOR_URL``) picks it as `conveyor.connect` does: ``http://``, ``tcp://``
or an embedded ``sqlite:///`` / ``postgresql://`` URL. Output is a readable table, or JSON
with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .client import connect
from .errors import ValidationError

DEFAULT_URL = "http://127.0.0.1:6790"
COMMANDS = ("push", "get", "stats", "queues", "dlq", "pause", "resume", "flow")


def add_parsers(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"server or storage URL (default: CONVEYOR_URL or {DEFAULT_URL})")
    common.add_argument("--token", help="bearer token (default: CONVEYOR_TOKEN)")
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    push = commands.add_parser("push", parents=[common], help="push a job")
    push.add_argument("queue")
    push.add_argument("name")
    push.add_argument("--data", type=_json_arg, help="job data as JSON")
    push.add_argument("--options", type=_json_arg, help='options as a JSON object, e.g. {"priority": 5}')
    commands.add_parser("get", parents=[common], help="show a job").add_argument("id")
    commands.add_parser("stats", parents=[common], help="counts by state (one queue, or all)").add_argument(
        "queue", nargs="?"
    )
    commands.add_parser("queues", parents=[common], help="list queues with counts")
    dlq = commands.add_parser("dlq", parents=[common], help="dead-lettered jobs of a queue")
    dlq.add_argument("queue")
    dlq.add_argument("--limit", type=int, default=100)
    commands.add_parser("pause", parents=[common], help="pause a queue").add_argument("queue")
    commands.add_parser("resume", parents=[common], help="resume a queue").add_argument("queue")
    commands.add_parser("flow", parents=[common], help="a flow's jobs and states").add_argument("flow_id")


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


async def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL
    token = args.token or os.environ.get("CONVEYOR_TOKEN")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    embedded = scheme in ("sqlite", "postgresql", "postgres")
    if scheme == "sqlite" and args.command != "push":
        path = url.split("://", 1)[1].removeprefix("/").split("?", 1)[0]
        if path and path != ":memory:" and not Path(path).exists():
            raise ValidationError(f"no database at {path!r}: only push creates one (check --url)", field="url")
    options: dict[str, Any] = {"maintenance": False} if embedded else {"token": token}
    async with connect(url, **options) as queue:
        return await _command(queue, args)


async def _command(q: Any, args: argparse.Namespace) -> int:
    out = _Output(args.json)
    if args.command == "push":
        if args.options is not None and not isinstance(args.options, dict):
            raise ValidationError("--options must be a JSON object", field="options")
        job_id = await q.push(args.queue, args.name, args.data, options=args.options)
        out.value({"id": str(job_id)}, str(job_id))
    elif args.command == "get":
        job = await q.get(args.id)
        if job is None:
            out.value({"job": None}, f"job {args.id} not found")
            return 1
        out.value(job, _job_text(job))
    elif args.command == "stats" and args.queue:
        counts = await q.stats(args.queue)
        out.value(counts, _table(["state", "jobs"], [[k, v] for k, v in counts.model_dump().items()]))
    elif args.command in ("stats", "queues"):
        infos = await q.queues()
        states = ["waiting", "active", "delayed", "blocked", "completed", "dlq", "cancelled"]
        rows = [[i.name, "yes" if i.paused else "", *(getattr(i.counts, s) for s in states)] for i in infos]
        out.value(infos, _table(["queue", "paused", *states], rows) if rows else "no queues")
    elif args.command == "dlq":
        jobs = await q.dlq(args.queue, args.limit)
        rows = [[str(j.id), j.name, j.attempt, (j.last_error or "")[:60]] for j in jobs]
        out.value(
            jobs, _table(["id", "name", "attempts", "last error"], rows) if rows else "dead-letter queue is empty"
        )
    elif args.command in ("pause", "resume"):
        await (q.pause if args.command == "pause" else q.resume)(args.queue)
        out.value({"ok": True}, f"{args.command}d {args.queue}")
    elif args.command == "flow":
        status = await q.flow(args.flow_id)
        rows = [[str(j.id), j.queue, j.name, j.state.value, j.attempt, (j.last_error or "")[:40]] for j in status.jobs]
        summary = ", ".join(f"{k} {v}" for k, v in status.summary.model_dump().items() if v and k != "total")
        if not rows:
            out.value(status, f"flow {args.flow_id} not found")
            return 1
        text = _table(["id", "queue", "name", "state", "attempts", "last error"], rows)
        out.value(status, f"{text}\n\n{status.summary.total} jobs: {summary or 'none'}")
    return 0


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def value(self, value: Any, text: str) -> None:
        print(json.dumps(_plain(value), indent=2) if self.as_json else text)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _job_text(job: Any) -> str:
    fields = ["id", "queue", "name", "state", "priority", "attempt", "max_attempts", "progress", "flow_id",
              "worker_id", "last_error", "created_at", "completed_at"]  # fmt: skip
    rows = [[name, getattr(job, name)] for name in fields if getattr(job, name) not in (None, "")]
    rows += [["data", json.dumps(job.data)], ["result", json.dumps(job.result)]]
    if job.metadata is not None:
        rows.append(["metadata", json.dumps(job.metadata)])
    return _table(["field", "value"], [[k, getattr(v, "value", v)] for k, v in rows])


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
