"""The ``conveyor`` command: ``serve`` (server mode), ``db upgrade``, and client commands
(``push``, ``get``, ``stats``, ``queues``, ``dlq``, ``pause``, ``resume``, ``flow``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from . import _cli_client, _cli_worker
from .app import Conveyor
from .config import Settings
from .errors import ClientConnectionError, ConveyorError
from .server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Conveyor job queue and workflow orchestrator.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--storage", default=argparse.SUPPRESS,
        help="storage URL (default: CONVEYOR_STORAGE, the config file, or sqlite:///./conveyor.db)",
    )  # fmt: skip
    common.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="FILE", help="TOML file of settings (same names as CONVEYOR_*)"
    )
    parser.add_argument("--storage", help=argparse.SUPPRESS)  # also accepted before the command
    parser.add_argument("--config", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser(
        "serve", parents=[common], help="run the HTTP and TCP servers",
        description="Serve the REST API and the TCP protocol until SIGINT/SIGTERM. Every setting may also "
        "come from CONVEYOR_* environment variables or --config; the command line wins.",
    )  # fmt: skip
    server.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--http-port", type=int, help="HTTP port (default 6790; 0 picks a free one)")
    server.add_argument("--tcp-port", type=int, help="TCP port (default 6789; 0 picks a free one)")
    server.add_argument(
        "--auth-token", action="append", dest="auth_tokens", metavar="TOKEN",
        help="accept this bearer token (repeatable); with none, auth is off",
    )  # fmt: skip

    db = commands.add_parser("db", parents=[common], help="database schema")
    db.add_subparsers(dest="db_command", required=True).add_parser(
        "upgrade", parents=[common], help="create or migrate the schema"
    )
    _cli_client.add_parsers(commands)
    _cli_worker.add_parser(commands)
    return parser


def _settings(args: argparse.Namespace, **fixed: Any) -> Settings:
    given = {name: getattr(args, name, None) for name in ("storage", "host", "http_port", "tcp_port", "auth_tokens")}
    return Settings.load(getattr(args, "config", None), **given, **fixed)


async def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        await serve(_settings(args), gc_tuning=True)
        return 0
    if args.command == "worker":
        return await _cli_worker.run(args)
    if args.command in _cli_client.COMMANDS:
        return await _cli_client.run(args)
    settings = _settings(args, maintenance=False)
    async with Conveyor(settings=settings):
        print(f"schema up to date: {settings.storage}")
    return 0


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401 - installed with uvicorn[standard]; faster sockets
    except ImportError:
        return {}
    return {"use_uvloop": True}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.INFO if args.command in ("serve", "worker") else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        return anyio.run(_run, args, backend_options=_backend_options())
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        error = _conveyor_error(exc)
        if error is None:
            raise
        print(f"conveyor: {error.code}: {error.message}", file=sys.stderr)
        return 3 if isinstance(error, ClientConnectionError) else 2


def _conveyor_error(exc: BaseException) -> ConveyorError | None:
    """The `ConveyorError` behind ``exc``, also when a task group wrapped it."""
    if isinstance(exc, ConveyorError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _conveyor_error(inner)) is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
