"""Server mode: run every protocol server the plugins provide until SIGINT/SIGTERM.

The first signal shuts down gracefully: long-poll pulls return, each server stops accepting
and lets in-flight requests finish, then storage is closed. A second signal stops at once.
"""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Callable

import anyio
from anyio import CancelScope

from ._gc import tune_gc
from .app import Conveyor
from .config import Settings
from .errors import PluginError
from .interfaces import ProtocolServer

log = logging.getLogger("conveyor")


def redact(url: str) -> str:
    """A storage URL fit for logs: the password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


async def serve(
    settings: Settings, *, on_listening: Callable[[str, str], None] | None = None, gc_tuning: bool = False
) -> None:
    """Open a `Conveyor` on ``settings`` and serve until a signal; ``on_listening(name,
    address)`` is called once per listener (default: one log line each). ``gc_tuning`` calls
    `tune_gc` once the app is open: process-wide, so only a process of its own asks for it
    (``conveyor serve`` does)."""
    announce = on_listening or (lambda name, address: log.info("%s listening on %s", name, address))
    async with Conveyor(settings=settings) as app:
        servers = app.protocol_servers()
        if not servers:
            raise PluginError("no protocol server to run: every protocol plugin is disabled or none is installed")
        log.info("storage %s", redact(settings.storage))
        if gc_tuning:
            tune_gc()  # start-up is done: what is alive now stays
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, app, servers, tg.cancel_scope)
            async with anyio.create_task_group() as serving:
                for server in servers:
                    serving.start_soon(server.serve, _ready(announce, server.name), name=f"conveyor-{server.name}")
            tg.cancel_scope.cancel()  # every server has returned: stop watching for signals
        log.info("servers stopped; closing storage")
    log.info("stopped")


def _ready(announce: Callable[[str, str], None], name: str) -> Callable[[str], None]:
    return lambda address: announce(name, address)


async def _stop_on_signal(app: Conveyor, servers: list[ProtocolServer], everything: CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: finishing in-flight requests (send it again to stop at once)", signal.Signals(signum).name)
            app.stop_waiting()
            for server in servers:
                await server.shutdown()
            break
        async for signum in signals:
            log.warning("%s again: stopping now", signal.Signals(signum).name)
            everything.cancel()
            return
