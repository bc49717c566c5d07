"""`TcpTransport`: one pipelined connection for ordinary calls — concurrent calls are written
back to back and their replies, which come in order, are matched to them in order — and a
connection of its own for each long-poll in flight, so a waiting ``pull`` never holds up the
calls behind it (the server answers a connection's requests one after another)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup

from ..errors import ClientConnectionError, LimitExceededError, error_for_code

READ_CHUNK = 65536
MAX_SPARE = 16
"""Long-poll connections kept open for reuse once their call is answered."""


class _Pending:
    __slots__ = ("done", "reply", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None


class _Connection:
    """One socket: requests written in order under a lock, replies matched in order."""

    def __init__(
        self, stream: SocketStream, address: str, write_timeout_s: float, forget: Callable[[_Connection], None]
    ) -> None:
        self.stream, self.address, self.write_timeout_s = stream, address, write_timeout_s
        self._forget = forget
        self.waiting: deque[_Pending] = deque()
        self.send_lock = anyio.Lock()
        self.usable = True
        """False once the connection is lost or the server said it will close it."""

    async def send(self, line: bytes) -> _Pending:
        pending = _Pending()
        async with self.send_lock:
            if not self.usable:
                raise ClientConnectionError(f"connection to {self.address} was closed")
            # Queued and written as one step that no cancellation splits: a call queued but never
            # written would be handed the reply of the call after it, and so on down the line.
            with anyio.CancelScope(shield=True):
                self.waiting.append(pending)
                try:
                    with anyio.fail_after(self.write_timeout_s):
                        await self.stream.send(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError) as exc:
                    await self.drop(ClientConnectionError(f"connection to {self.address} lost: {exc!r}"))
        return pending

    async def read(self) -> None:
        buffer = bytearray()
        error: BaseException = ClientConnectionError(f"{self.address} closed the connection")
        try:
            while True:
                buffer += await self.stream.receive(READ_CHUNK)
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = bytes(buffer[:end]), buffer[end + 1 :]
                    self._resolve(json.loads(line))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except (ValueError, RecursionError) as exc:
            error = ClientConnectionError(f"{self.address} sent a line that is not a reply: {exc!r}"[:500])
        await self.drop(error)

    def _resolve(self, reply: Any) -> None:
        if not self.waiting:
            raise ValueError("a reply no request was waiting for")
        pending = self.waiting.popleft()
        if isinstance(reply, dict) and reply.get("ok") is True:
            pending.reply = reply
        else:
            error = reply.get("error") if isinstance(reply, dict) else None
            if not isinstance(error, dict):
                error = {"code": "INTERNAL_ERROR", "message": f"malformed reply: {str(reply)[:200]}"}
            pending.error = error_for_code(str(error.get("code")), str(error.get("message")), error.get("details"))
            if isinstance(pending.error, LimitExceededError) and pending.error.field == "line":
                self.usable = False  # the server refused an over-long line and is closing the connection
        pending.done.set()

    async def drop(self, error: BaseException) -> None:
        """Close the socket and fail every call still waiting on it."""
        self.usable = False
        self._forget(self)
        waiting, self.waiting = self.waiting, deque()
        for pending in waiting:
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


class TcpTransport:
    """Connects lazily, authenticates with ``token`` when given, and reconnects on the call
    after a lost connection. A call that times out closes its connection: its reply could no
    longer be told apart from the next one's."""

    def __init__(self, host: str, port: int, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._main: _Connection | None = None
        self._main_lock = anyio.Lock()
        self._spare: list[_Connection] = []
        self._open: set[_Connection] = set()
        """Every connection not yet dropped (connecting, in use, spare): `close` fails the
        calls on all of them at once."""
        self._tg: TaskGroup | None = None
        self._closed = False

    @property
    def _address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def open(self) -> None:
        self._closed = False
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()

    async def close(self) -> None:
        self._closed = True
        closing = ClientConnectionError("client closed")
        main, self._main = self._main, None
        self._spare = []
        for conn in {*([main] if main else []), *self._open}:
            await conn.drop(closing)
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def call(self, cmd: str, params: dict[str, Any], wait_s: float = 0) -> dict[str, Any]:
        line = _line({"cmd": cmd, **params})
        conn: _Connection | None = None
        pending: _Pending | None = None
        try:
            with anyio.move_on_after(self.timeout_s + wait_s):
                conn = await (self._long_poll_connection() if wait_s > 0 else self._main_connection())
                pending = await conn.send(line)
                await pending.done.wait()
        except BaseException:
            # A long-poll given up (the caller was cancelled) would answer a later call on this
            # connection: close it. On the main connection its reply just finds no one.
            if wait_s > 0 and conn is not None and not (pending is not None and pending.done.is_set()):
                await conn.drop(ClientConnectionError("call cancelled"))
            raise
        if pending is None or not pending.done.is_set():  # timed out, connecting or waiting
            error = ClientConnectionError(f"no reply from {self._address} within {self.timeout_s + wait_s:g} s")
            if conn is not None:
                await conn.drop(error)
            raise error
        if wait_s > 0 and conn is not None:
            self._keep_spare(conn)
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    async def _main_connection(self) -> _Connection:
        async with self._main_lock:  # concurrent first calls share one connection
            if self._main is None or not self._main.usable:
                self._main = await self._connect()
            return self._main

    async def _long_poll_connection(self) -> _Connection:
        while self._spare:
            conn = self._spare.pop()
            if conn.usable:
                return conn
        return await self._connect()

    def _keep_spare(self, conn: _Connection) -> None:
        if conn.usable and not self._closed and len(self._spare) < MAX_SPARE:
            self._spare.append(conn)
        elif self._tg is not None:
            self._tg.start_soon(conn.drop, ClientConnectionError("not needed"))

    async def _connect(self) -> _Connection:
        if self._closed or self._tg is None:
            raise ClientConnectionError("client is not open: use 'async with conveyor.connect(...)'")
        try:
            stream = await anyio.connect_tcp(self.host, self.port)
        except OSError as exc:
            raise ClientConnectionError(f"cannot connect to {self._address}: {exc.strerror or exc}") from None
        if self._closed or self._tg is None:  # closed while connecting
            await stream.aclose()
            raise ClientConnectionError("client closed")
        conn = _Connection(stream, self._address, self.timeout_s, self._open.discard)
        self._open.add(conn)
        self._tg.start_soon(conn.read)
        if self.token is not None:
            try:
                auth = await conn.send(_line({"cmd": "auth", "token": self.token}))
                await auth.done.wait()
            except BaseException:  # timed out or cancelled: nothing else holds this socket
                await conn.drop(ClientConnectionError(f"no answer to auth from {self._address}"))
                raise
            if auth.error is not None:
                await conn.drop(auth.error)
                raise auth.error
        return conn


def _line(request: dict[str, Any]) -> bytes:
    """The request's line. Text JSON can carry but UTF-8 cannot (a lone surrogate) is sent
    escaped, so the server refuses it by field, as the embedded API does."""
    text = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(request, separators=(",", ":")).encode() + b"\n"
