"""`HttpServer`: the REST API served by uvicorn inside the host's event loop."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator

import uvicorn

from conveyor import Conveyor, ConveyorError

from .api import build_api


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (the host owns SIGINT/SIGTERM) that reports
    when it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening socket (IPv4 or IPv6 by ``host``); a taken port becomes a clear error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConveyorError(f"{what}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class HttpServer:
    """Serves `build_api` on ``settings.host:settings.http_port`` until `shutdown`, then lets
    in-flight requests finish (up to ``settings.shutdown_grace_s``)."""

    name = "http"

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._server: _EmbeddedUvicorn | None = None
        self._stopping = False

    async def serve(self, ready: Callable[[str], None]) -> None:
        settings = self.app.settings
        sock = listen(settings.host, settings.http_port, "http")
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        config = uvicorn.Config(
            build_api(self.app), lifespan="off", log_config=None, log_level="warning", access_log=False, server_header=False, proxy_headers=False,
            timeout_graceful_shutdown=settings.shutdown_grace_s or None, backlog=2048,
        )  # fmt: skip
        self._server = _EmbeddedUvicorn(config, lambda: ready(f"http://{shown}:{port}"))
        self._server.should_exit = self._stopping
        try:
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()

    async def shutdown(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
