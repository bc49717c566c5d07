"""The ``conveyor`` command. Server and client commands arrive with their plugins; this holds
what the kernel alone can do."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import anyio

from .app import Conveyor
from .config import Settings
from .errors import ConveyorError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description="Conveyor job queue and workflow orchestrator.")
    parser.add_argument("--storage", help="storage URL (default: CONVEYOR_STORAGE or sqlite:///./conveyor.db)")
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="database schema")
    db.add_subparsers(dest="db_command", required=True).add_parser("upgrade", help="create or migrate the schema")
    commands.add_parser("queues", help="list queues with counts (embedded storage)")
    return parser


async def _run(args: argparse.Namespace) -> int:
    settings = Settings(**({"storage": args.storage} if args.storage else {}), maintenance=False)
    async with Conveyor(settings=settings) as app:
        if args.command == "db":
            print(f"schema up to date: {settings.storage}")
        elif args.command == "queues":
            print(json.dumps([q.model_dump() for q in await app.queues()], indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return anyio.run(_run, args)
    except ConveyorError as exc:
        print(f"conveyor: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
