"""`TcpServer`: line-delimited JSON over TCP (anyio), one connection task per client.

Requests on a connection run one after another, in order (a ``pull`` pipelined after a
``push`` sees it); replies to requests that arrived together are written together. Many
connections run concurrently and their storage calls share group commits.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from conveyor import Conveyor, commands, wire
from conveyor.auth import TokenAuth
from conveyor.errors import ConveyorError, LimitExceededError, ParseError, UnauthorizedError, ValidationError

log = logging.getLogger("conveyor.tcp")
READ_CHUNK = 65536


class LineTooLong(Exception):
    pass


class _Lines:
    """Reads ``\\n``-terminated lines, never holding more than ``limit`` bytes of one line.

    Waiting for a new line times out after ``idle_s``; finishing a line already begun, after
    ``slow_s`` (a client that trickles bytes cannot hold a connection forever)."""

    def __init__(self, stream: SocketStream, limit: int, idle_s: float, slow_s: float) -> None:
        self.stream, self.limit, self.idle_s, self.slow_s = stream, limit, idle_s, slow_s
        self.buffer = bytearray()

    def ready(self) -> bytes | None:
        """The next complete line already received, if any."""
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > self.limit:
                raise LineTooLong
            return None
        if end > self.limit:
            raise LineTooLong
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line

    async def next(self) -> bytes | None:
        """The next line; None at end of stream or timeout."""
        while (line := self.ready()) is None:
            with anyio.move_on_after(self.slow_s if self.buffer.strip() else self.idle_s) as waiting:
                try:
                    chunk = await self.stream.receive(READ_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return None
            if waiting.cancelled_caught:
                return None
            self.buffer += chunk
        return line


def _encode(reply: dict[str, Any]) -> bytes:
    """The reply's line; a reply that cannot be encoded (a bug, or text no encoding allows)
    becomes an error reply, so the connection and the server carry on."""
    try:
        return wire.encode(reply) + b"\n"
    except Exception as exc:  # noqa: BLE001 - reported to the client and logged
        log.exception("could not encode a tcp reply")
        error = ConveyorError(f"internal error: the reply could not be encoded ({type(exc).__name__})")
        return wire.encode(_error(error)) + b"\n"


def _error(exc: ConveyorError) -> dict[str, Any]:
    return {"ok": False, "error": exc.to_wire()}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class TcpServer:
    """Serves the line protocol on ``settings.host:settings.tcp_port`` until `shutdown`; then
    stops accepting, lets each connection finish the request it is running, and closes."""

    name = "tcp"

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self.auth = TokenAuth(app.settings.auth_tokens)
        self._stopping = False
        self._accepting: anyio.CancelScope | None = None
        self._idle: set[anyio.CancelScope] = set()
        self._drained: anyio.Event | None = None
        self.connections = 0

    async def serve(self, ready: Callable[[str], None]) -> None:
        settings = self.app.settings
        self._drained = anyio.Event()
        try:
            listener = await anyio.create_tcp_listener(local_host=settings.host, local_port=settings.tcp_port)
        except OSError as exc:
            raise ConveyorError(
                f"tcp: cannot listen on {settings.host}:{settings.tcp_port}: {exc.strerror or exc}"
            ) from None
        address = listener.extra(SocketAttribute.local_address)
        assert isinstance(address, tuple)  # an IP listener
        host, port = address[:2]
        async with listener, anyio.create_task_group() as connections:
            with anyio.CancelScope() as self._accepting:
                if self._stopping:
                    return
                ready(f"tcp://{f'[{host}]' if ':' in host else host}:{port}")
                await listener.serve(self._connection, connections)
            # shutting down: each connection finishes the request it runs, then closes
            with anyio.move_on_after(settings.shutdown_grace_s or math.inf):
                if self.connections:
                    await self._drained.wait()
            connections.cancel_scope.cancel()

    async def shutdown(self) -> None:
        self._stopping = True
        if self._accepting is not None:
            self._accepting.cancel()
        for scope in list(self._idle):
            scope.cancel()

    async def _connection(self, stream: SocketStream) -> None:
        self.connections += 1
        try:
            async with stream:
                await self._converse(stream)
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # a client that stopped reading or went away
        finally:
            self.connections -= 1
            if self._stopping and not self.connections and self._drained is not None:
                self._drained.set()

    async def _converse(self, stream: SocketStream) -> None:
        settings = self.app.settings
        lines = _Lines(stream, settings.max_request_bytes, settings.tcp_idle_timeout_s, settings.tcp_request_timeout_s)
        authed = not self.auth.enabled
        try:
            while not self._stopping:
                with anyio.CancelScope() as idle:
                    self._idle.add(idle)
                    line = await lines.next()
                self._idle.discard(idle)
                if line is None:
                    return
                out = bytearray()
                while line is not None:  # every line already here; replies go out together
                    if line.strip():  # a blank line is no request (telnet users press enter)
                        reply, authed = await self._request(line, authed)
                        out += _encode(reply)
                    line = lines.ready()
                if out:
                    with anyio.fail_after(settings.tcp_request_timeout_s):
                        await stream.send(bytes(out))
        except LineTooLong:
            await _refuse_and_close(stream, settings.max_request_bytes)

    async def _request(self, line: bytes, authed: bool) -> tuple[dict[str, Any], bool]:
        try:
            request = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            return _error(ParseError(f"line is not valid JSON: {reason}")), authed
        if not isinstance(request, dict):
            return _error(ParseError(f"line must be a JSON object, got {type(request).__name__}")), authed
        cmd = request.pop("cmd", None)
        if cmd is None:
            return _error(ValidationError("cmd: Field required", field="cmd")), authed
        try:
            if cmd == "auth":
                token = request.get("token")
                self.auth.check(token if isinstance(token, str) else None)
                return {"ok": True}, True
            if not authed:
                raise UnauthorizedError('auth required: send {"cmd": "auth", "token": ...} first')
            return await commands.execute(self.app, cmd, request), authed
        except ConveyorError as exc:
            return _error(exc), authed
        except Exception as exc:  # noqa: BLE001 - reported, and the connection stays usable
            log.exception("unexpected error in tcp command %r", cmd)
            return _error(ConveyorError(f"internal error: {type(exc).__name__}")), authed


async def _refuse_and_close(stream: SocketStream, limit: int) -> None:
    """Reply to an over-long line, then discard what the client still sends before closing:
    closing with unread input would reset the connection and lose the reply."""
    error = LimitExceededError(f"request line exceeds {limit} bytes", field="line", details={"limit": limit})
    with anyio.move_on_after(1):
        try:
            await stream.send(_encode(_error(error)))
            await stream.send_eof()
            while True:
                await stream.receive(READ_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
