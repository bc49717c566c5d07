"""`TcpServer`: line-delimited JSON over TCP (anyio), one connection task per client.

Requests on a connection run one after another, in order (a ``pull`` pipelined after a
``push`` sees it). Each reply is sent when its request is done, except that replies to lines
already received are gathered, up to `REPLY_GATHER` bytes, into one send; a reply never waits
behind a long-poll. Many connections run concurrently and their storage calls share group
commits.
"""

from __future__ import annotations

import errno
import logging
import math
import resource
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

from conveyor import Conveyor, commands, wire
from conveyor.auth import TokenAuth
from conveyor.errors import (
    ConveyorError,
    LimitExceededError,
    ParseError,
    RateLimitedError,
    UnauthorizedError,
    ValidationError,
)
from conveyor.pulls import PullStop

log = logging.getLogger("conveyor.tcp")
READ_CHUNK = 65536
REPLY_GATHER = 65536
"""Replies to pipelined requests are sent together up to this many bytes: one send for many
small replies, and a client that writes requests without reading replies holds at most this
(plus one reply) of the server's memory."""
SEND_CHUNK = 262144
"""Replies go out in pieces this big, each with the full send timeout: a slow reader that keeps
reading is not cut off, one that stops is."""
MAX_AUTH_FAILURES = 5
"""Refused ``auth`` attempts after which a connection is closed."""
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""accept() errors that mean the process is out of a resource: wait a little, then go on."""
MAX_TURNING_AWAY = 16
"""Clients over the connection limit being told so at once; beyond, they are closed unanswered."""
FD_HEADROOM = 128
"""File descriptors kept free of TCP connections: the database, HTTP, webhooks, logs."""


class LineTooLong(Exception):
    pass


class _Lines:
    """Reads ``\\n``-terminated lines, never holding more than ``limit`` bytes of one line.

    Waiting for a line to begin times out after ``idle_s``. Once the server waits for the rest
    of a begun line, the client has ``slow_s`` to finish it, however it trickles the bytes in
    (time the server spends on earlier requests does not count). At end of stream, a last
    line without its ``\\n`` still counts (``printf '{...}' | nc``)."""

    def __init__(self, stream: SocketStream, limit: int, idle_s: float, slow_s: float) -> None:
        self.stream, self.limit, self.idle_s, self.slow_s = stream, limit, idle_s, slow_s
        self.buffer = bytearray()
        self.ended = False

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
        deadline = time.monotonic() + self.slow_s if self.buffer else None
        while (line := self.ready()) is None:
            if self.ended:
                return self._last()
            wait_s = self.idle_s if deadline is None else deadline - time.monotonic()
            with _deadline(wait_s) as waiting:
                try:
                    chunk = await self.stream.receive(READ_CHUNK)
                except anyio.EndOfStream:
                    self.ended = True
                    continue
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return None
            if waiting.cancelled_caught:
                return None
            if deadline is None:
                deadline = time.monotonic() + self.slow_s
            self.buffer += chunk
        return line

    async def watch_for_end(self) -> None:
        """Return at end of stream; what arrives before it joins the buffer. Lines that pile up
        past ``limit`` stop the watch (`ready` refuses them later)."""
        while not self.ended and len(self.buffer) <= self.limit:
            try:
                self.buffer += await self.stream.receive(READ_CHUNK)
            except anyio.EndOfStream:
                self.ended = True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.ended = True
        if not self.ended:
            await anyio.sleep_forever()

    def _last(self) -> bytes | None:
        line, self.buffer = bytes(self.buffer), bytearray()
        return line if line.strip() else None


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
        self.max_connections = app.settings.tcp_max_connections
        self._last_warning: dict[str, float] = {}
        self._turning_away = 0

    async def serve(self, ready: Callable[[str], None]) -> None:
        settings = self.app.settings
        self._drained = anyio.Event()
        self.max_connections = _fit_fd_limit(settings.tcp_max_connections)
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
                async with anyio.create_task_group() as accepting:
                    for one in listener.listeners:  # one per address family the host resolves to
                        assert isinstance(one, SocketListener)
                        accepting.start_soon(self._accept, one, connections)
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

    async def _accept(self, listener: SocketListener, connections: TaskGroup) -> None:
        """Accept until cancelled. Running out of descriptors or memory is waited out (the
        connections open now keep being served), not fatal; over ``tcp_max_connections`` a
        client is told so and closed."""
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in EXHAUSTED:
                    self._warn("accept", f"tcp: cannot accept a connection ({exc.strerror}); retrying in 0.1 s")
                    await anyio.sleep(0.1)
                continue  # a client that gave up during the handshake
            if self.connections >= self.max_connections:
                self._warn("limit", f"tcp: refusing connections: {self.connections} open, the limit")
                if self._turning_away < MAX_TURNING_AWAY:
                    self._turning_away += 1
                    connections.start_soon(self._turn_away, stream)
                else:  # a flood: no reply, so refused clients cannot hold descriptors meant for others
                    await stream.aclose()
                continue
            connections.start_soon(self._connection, stream)

    def _warn(self, kind: str, message: str) -> None:
        """Log ``message``, at most once every 10 s for each ``kind``."""
        now = time.monotonic()
        if now - self._last_warning.get(kind, -math.inf) >= 10:
            self._last_warning[kind] = now
            log.warning(message)

    async def _turn_away(self, stream: SocketStream) -> None:
        error = RateLimitedError(
            f"too many connections: the server holds {self.max_connections} at most; retry later",
            details={"limit": self.max_connections},
        )
        try:
            async with stream:
                await _refuse_and_close(stream, error)
        finally:
            self._turning_away -= 1

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
        timeout_s = settings.tcp_request_timeout_s
        lines = _Lines(stream, settings.max_request_bytes, settings.tcp_idle_timeout_s, timeout_s)
        session = _Session(authed=not self.auth.enabled)
        out = bytearray()
        try:
            while not self._stopping:
                line = None
                with anyio.CancelScope() as idle:
                    self._idle.add(idle)
                    try:
                        line = await lines.next()
                    finally:
                        self._idle.discard(idle)
                if line is None:  # end of stream, timeout or shutdown
                    return
                while line is not None:
                    request = _parse(line)
                    if _may_wait(request):
                        if out:  # what is done goes out before a long-poll
                            await _send(stream, out, timeout_s)
                            out.clear()
                        out += _encode(await self._long_poll(request, session, lines))
                    else:
                        out += _encode(await self._request(request, session))
                    if session.auth_failures >= MAX_AUTH_FAILURES:
                        await _send(stream, out, timeout_s)
                        return
                    line = lines.ready()
                    if line is None or len(out) >= REPLY_GATHER:
                        await _send(stream, out, timeout_s)
                        out.clear()
        except LineTooLong:
            if out:
                await _send(stream, out, timeout_s)
            limit = settings.max_request_bytes
            error = LimitExceededError(f"request line exceeds {limit} bytes", field="line", details={"limit": limit})
            await _refuse_and_close(stream, error)

    async def _long_poll(self, request: dict[str, Any], session: _Session, lines: _Lines) -> dict[str, Any]:
        """A pull that may wait, run while the connection is watched. Bytes that arrive
        meanwhile are kept for the next lines. The end of the stream (the client closed, or
        will send nothing more) ends the wait: no job is claimed after it for a client that
        may be gone (it would wait out the stall timeout and lose an attempt), while a claim
        already under way completes and is answered (a `PullStop`, not a cancellation)."""
        stop = PullStop()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await lines.watch_for_end()
                stop.stop()

            tg.start_soon(watch)
            with stop.applied():
                reply = await self._request(request, session)
            tg.cancel_scope.cancel()
        return reply

    async def _request(self, request: dict[str, Any] | ConveyorError, session: _Session) -> dict[str, Any]:
        if isinstance(request, ConveyorError):
            return _error(request)
        cmd = request.pop("cmd", None)
        if cmd is None:
            return _error(ValidationError("cmd: Field required", field="cmd"))
        try:
            if cmd == "auth":
                token = request.get("token")
                try:
                    self.auth.check(token if isinstance(token, str) else None)
                except UnauthorizedError:
                    session.auth_failures += 1
                    raise
                session.authed = True
                return {"ok": True}
            if not session.authed:
                raise UnauthorizedError('auth required: send {"cmd": "auth", "token": ...} first')
            return await commands.execute(self.app, cmd, request)
        except ConveyorError as exc:
            return _error(exc)
        except Exception as exc:  # noqa: BLE001 - reported, and the connection stays usable
            log.exception("unexpected error in tcp command %r", cmd)
            return _error(ConveyorError(f"internal error: {type(exc).__name__}"))


class _Session:
    __slots__ = ("authed", "auth_failures")

    def __init__(self, authed: bool) -> None:
        self.authed = authed
        self.auth_failures = 0


def _parse(line: bytes) -> dict[str, Any] | ConveyorError:
    """The request object on ``line``, or the error to answer it with."""
    if not line.strip():
        return ParseError("empty line: send one JSON object per line")
    if b"\x00" in line:  # UTF-16/32: the protocol is UTF-8, and this says so more plainly than a JSON error
        return ParseError("line is not valid JSON: it holds a NUL byte (send UTF-8)")
    try:
        request = wire.loads(line)
    except ValueError as exc:
        return ParseError(f"line is not valid JSON: {exc}")
    if not isinstance(request, dict):
        return ParseError(f"line must be a JSON object, got {type(request).__name__}")
    return request


def _may_wait(request: dict[str, Any] | ConveyorError) -> bool:
    return isinstance(request, dict) and request.get("cmd") == "pull" and bool(request.get("wait_ms"))


async def _send(stream: SocketStream, data: bytearray, timeout_s: float) -> None:
    view = memoryview(data)  # slices copied once each, into the bytes sent
    try:
        for start in range(0, len(data), SEND_CHUNK):
            with _deadline(timeout_s) as sending:
                await stream.send(bytes(view[start : start + SEND_CHUNK]))
            if sending.cancelled_caught:
                raise TimeoutError
    finally:
        view.release()  # the caller clears ``data``: a live view would forbid resizing it


def _deadline(seconds: float) -> anyio.CancelScope:
    """``anyio.move_on_after(seconds)``, as the plain scope it makes: that one is a generator-based
    context manager around another, and this runs twice per request."""
    return anyio.CancelScope(deadline=anyio.current_time() + seconds)


def _fit_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files (up to the hard limit) so ``wanted`` connections fit
    beside `FD_HEADROOM` other descriptors; else the connection limit that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    need = wanted + FD_HEADROOM
    if soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (OSError, ValueError):
            pass
    headroom = min(FD_HEADROOM, soft // 2)
    if soft >= wanted + headroom:
        return wanted
    fitted = max(1, soft - headroom)
    log.warning("tcp: open-file limit %d allows %d connections, not tcp_max_connections=%d", soft, fitted, wanted)
    return fitted


async def _refuse_and_close(stream: SocketStream, error: ConveyorError) -> None:
    """Send ``error``, then discard what the client still sends before closing: closing with
    unread input would reset the connection and lose the reply."""
    with anyio.move_on_after(1):
        try:
            await stream.send(_encode(_error(error)))
            await stream.send_eof()
            while True:
                await stream.receive(READ_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
