"""``conveyor push|get|stats|queues|dlq|pause|resume|flow``: a queue reached by URL.

``--url`` (or ``CONVEYOR_URL``) picks it as `conveyor.connect` does: ``http://``, ``tcp://``
or an embedded ``sqlite:///`` / ``postgresql://`` URL. Output is a readable table, or JSON
with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .client import connect
from .errors import ClientConnectionError, StorageUnavailableError, ValidationError

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
    push.add_argument(
        "--data", type=_json_arg, metavar="JSON", help="job data as JSON; @FILE reads it from a file, - from stdin"
    )
    push.add_argument(
        "--options", type=_json_arg, metavar="JSON",
        help='options as a JSON object, e.g. {"priority": 5} (also @FILE or -)',
    )  # fmt: skip
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
    """JSON given inline, as ``@FILE`` or as ``-`` (stdin): one argument is capped at 128 KB on
    Linux, and neither form is valid JSON, so they cannot be mistaken for data."""
    source = "argument"
    if text == "-":
        text, source = sys.stdin.read(), "stdin"
    elif text.startswith("@"):
        source = text[1:]
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(
                f"cannot read {source!r}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{source} is not JSON: {exc}") from None


async def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL
    token = args.token or os.environ.get("CONVEYOR_TOKEN")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    embedded = scheme in ("sqlite", "postgresql", "postgres") or scheme.startswith("postgresql+")
    if embedded:
        database = _database_url(url)
        if scheme == "sqlite":
            _check_sqlite(database, args.command)
    options: dict[str, Any] = {"maintenance": False} if embedded else {"token": token}
    try:
        async with connect(url, **options) as queue:
            return await _command(queue, args)
    except StorageUnavailableError as exc:  # the embedded form of a server that is down
        raise ClientConnectionError(exc.message) from None


def _database_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValidationError(
            f"--url is not a database URL ({exc}): e.g. sqlite:///jobs.db or postgresql://host/db", field="url"
        ) from None


def _check_sqlite(url: URL, command: str) -> None:
    """Refuse what SQLite would quietly turn into an empty database: each command is its own
    process, so an in-memory one (which ``sqlite://host.db`` also became) loses what it is
    given, and a mistyped path would read as a queue with no jobs."""
    if url.host or url.port or url.username or url.password:
        raise ValidationError(
            f"--url {url.render_as_string()!r} has a host part: a file takes three slashes (sqlite:///jobs.db), "
            "an absolute path four (sqlite:////var/lib/jobs.db)",
            field="url",
        )
    path = url.database or ""
    if path in ("", ":memory:") or url.query.get("mode") == "memory":
        raise ValidationError(
            "--url names an in-memory database, which this one-shot command could never read back: "
            "give a file, e.g. sqlite:///jobs.db",
            field="url",
        )
    if command != "push" and not path.startswith("file:") and not Path(path).exists():
        raise ValidationError(f"no database at {path!r}: only push creates one (check --url)", field="url")


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
            out.missing({"job": None}, f"job {args.id} not found")
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
        rows = [[str(j.id), j.name, j.attempt, _clip(j.last_error or "", 60)] for j in jobs]
        out.value(
            jobs, _table(["id", "name", "attempts", "last error"], rows) if rows else "dead-letter queue is empty"
        )
    elif args.command in ("pause", "resume"):
        await (q.pause if args.command == "pause" else q.resume)(args.queue)
        out.value({"ok": True}, f"{args.command}d {args.queue}")
    elif args.command == "flow":
        status = await q.flow(args.flow_id)
        rows = [
            [str(j.id), j.queue, j.name, j.state.value, j.attempt, _clip(j.last_error or "", 40)] for j in status.jobs
        ]
        summary = ", ".join(f"{k} {v}" for k, v in status.summary.model_dump().items() if v and k != "total")
        if not rows:
            out.missing(status, f"flow {args.flow_id} not found")
            return 1
        text = _table(["id", "queue", "name", "state", "attempts", "last error"], rows)
        out.value(status, f"{text}\n\n{status.summary.total} jobs: {summary or 'none'}")
    return 0


class _Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def value(self, value: Any, text: str) -> None:
        if self.as_json:
            text = _json_text(_plain(value), sys.stdout.encoding or "utf-8")
        _write(sys.stdout, text)

    def missing(self, value: Any, text: str) -> None:
        """Not found: JSON stays on stdout for scripts; the text goes to stderr, like errors."""
        if self.as_json:
            self.value(value, text)
        else:
            _write(sys.stderr, f"conveyor: {text}")


def _write(stream: TextIO, text: str) -> None:
    """Print ``text`` whatever ``stream`` can encode: what it cannot (outside a UTF-8 locale)
    becomes a backslash escape rather than a crash."""
    encoding = stream.encoding or "utf-8"
    print(text.encode(encoding, "backslashreplace").decode(encoding), file=stream)


_UNSAFE_IN_JSON = re.compile(r"[^\x20-\x7e\n]")
"""Outside JSON strings ``json.dumps`` writes only printable ASCII and newlines: anything else is
string content, and may be written as a ``\\u`` escape without changing the document."""


def _json_text(value: Any, encoding: str) -> str:
    """JSON with readable non-ASCII text, but with `_INVISIBLE` characters (``json.dumps`` lets
    DEL, C1 controls and bidi overrides through), lone surrogates and whatever ``encoding``
    cannot carry written as ``\\uXXXX``: still the same JSON, and safe on a terminal."""

    def escape(match: re.Match[str]) -> str:
        ch = match.group()
        if unicodedata.category(ch) not in _INVISIBLE and _encodable(ch, encoding):
            return ch
        units = ch.encode("utf-16-le", "surrogatepass")
        return "".join(f"\\u{int.from_bytes(units[i : i + 2], 'little'):04x}" for i in range(0, len(units), 2))

    return _UNSAFE_IN_JSON.sub(escape, json.dumps(value, indent=2, ensure_ascii=False))


def _encodable(ch: str, encoding: str) -> bool:
    try:
        ch.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


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
    rows += [["data", json.dumps(job.data, ensure_ascii=False)], ["result", json.dumps(job.result, ensure_ascii=False)]]
    if job.metadata is not None:
        rows.append(["metadata", json.dumps(job.metadata, ensure_ascii=False)])
    return _table(["field", "value"], [[k, getattr(v, "value", v)] for k, v in rows])


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_visible(str(c)) for c in header], *[[_visible(str(c)) for c in row] for row in rows]]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Controls, format characters (bidi overrides, zero-width), surrogates, private-use and
unassigned code points, line and paragraph separators: written as escapes, so that whoever can
push a job cannot move the operator's cursor, recolour the terminal or split a table row."""


def _visible(text: str) -> str:
    if text.isprintable() and text.isascii():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _INVISIBLE else ch for ch in text
    )


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    """Terminal cells, not code points: wide (CJK) characters take two, combining marks none."""
    return sum(_char_width(ch) for ch in text)


def _clip(text: str, cells: int) -> str:
    """``text`` made visible and cut to at most ``cells`` terminal cells."""
    text = _visible(text)
    if _width(text) <= cells:
        return text
    kept, used = [], 0
    for ch in text:
        used += _char_width(ch)
        if used > cells - 1:
            break
        kept.append(ch)
    return "".join(kept) + "…"
