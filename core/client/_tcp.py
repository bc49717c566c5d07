"""`TcpTransport`: one pipelined connection for ordinary calls — concurrent calls are written
back to back and their replies, which come in order, are matched to them in order — and a
connection of its own for each long-poll in flight, so a waiting ``pull`` never holds up the
calls behind it (the server answers a connection's requests one after another).

No task runs in the background: the calls waiting on a connection read its replies
themselves, one at a time (the first in line reads for all, and hands reading on to the next
when its own reply has come). So a client holds no task group, and may be opened, used and
closed from any tasks, in any order.
"""

from __future__ import annotations

import json
import select
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from ..errors import ClientConnectionError, LimitExceededError, error_for_code
from ._api import SETTLE_S, give_back

READ_CHUNK = 65536
MAX_SPARE = 16
"""Long-poll connections kept open for reuse once their call is answered."""
_poll = getattr(select, "poll", None)
"""Not on Windows."""


class _NotSent(ClientConnectionError):
    """The connection was lost before this call was written: it did not run, and may be sent
    again on a new connection."""


class _Pending:
    __slots__ = ("done", "reply", "error", "wake", "waited")

    def __init__(self) -> None:
        self.done = False
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.wake = anyio.Event()
        """Set when answered, or when its waiter should take over reading."""
        self.waited = False
        """A call is waiting for it now (a cancelled call's reply is read and dropped)."""

    def answer(self) -> None:
        self.done = True
        self.wake.set()


class _Connection:
    """One socket: requests written in order under a lock, replies read by their waiters and
    matched in order."""

    def __init__(
        self, stream: SocketStream, address: str, write_timeout_s: float, forget: Callable[[_Connection], None]
    ) -> None:
        self.stream, self.address, self.write_timeout_s = stream, address, write_timeout_s
        self._forget = forget
        self.waiting: deque[_Pending] = deque()
        self.send_lock = anyio.Lock()
        self.usable = True
        """False once the connection is lost or the server said it will close it."""
        self._reading = False
        self._idle_poll = None
        sock = stream.extra(SocketAttribute.raw_socket, None)
        if sock is not None and _poll is not None:
            self._idle_poll = _poll()
            self._idle_poll.register(sock.fileno(), select.POLLIN)
        self._buffer = bytearray()
        self._scanned = 0
        """Bytes at the start of ``_buffer`` known to hold no newline."""

    async def send(self, line: bytes) -> _Pending:
        pending = _Pending()
        async with self.send_lock:
            if not self.waiting and self.usable:
                self._check_idle()
            if not self.usable:
                if not self.waiting:
                    await self.drop(ClientConnectionError(f"connection to {self.address} was closed"))
                raise _NotSent(f"connection to {self.address} was closed")
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

    def _check_idle(self) -> None:
        """With no reply due, anything the socket holds is the server's close (an idle
        timeout) or a line sent unasked: either way, not a connection to send a call on. A
        poll that does not wait, only on an idle connection."""
        if self._buffer:
            self.usable = False  # bytes nobody asked for
        elif self._idle_poll is not None and self._idle_poll.poll(0):
            self.usable = False
        # with no socket to poll (Windows), a close shows on the next read

    async def wait(self, pending: _Pending) -> None:
        """Until ``pending`` is answered. Whoever waits first reads the replies for everyone."""
        pending.waited = True
        try:
            while not pending.done:
                if self._reading:
                    await pending.wake.wait()
                    if not pending.done:
                        pending.wake = anyio.Event()
                    continue
                self._reading = True
                try:
                    await self._read_until(pending)
                finally:
                    self._reading = False
                    self._hand_on()
        finally:
            pending.waited = False
            if not pending.done and not self._reading:
                self._hand_on()  # it may have been woken to read, and left (cancelled) instead

    def _hand_on(self) -> None:
        """Wake the first call still waiting for its reply: it reads next."""
        for pending in self.waiting:
            if pending.waited and not pending.done:
                pending.wake.set()
                return

    async def _read_until(self, pending: _Pending) -> None:
        error: BaseException = ClientConnectionError(f"{self.address} closed the connection")
        try:
            while not pending.done:
                while (end := self._buffer.find(b"\n", self._scanned)) < 0:
                    self._scanned = len(self._buffer)
                    self._buffer += await self.stream.receive(READ_CHUNK)
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scanned = 0
                self._resolve(json.loads(line))
            return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - not JSON, too deep, a reply nobody asked for...
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
        pending.answer()

    async def end_sending(self) -> None:
        """Tell the server no more requests come (a long-poll then stops waiting)."""
        self.usable = False
        try:
            await self.stream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def drop(self, error: BaseException) -> None:
        """Close the socket and fail every call still waiting on it."""
        self.usable = False
        self._forget(self)
        waiting, self.waiting = self.waiting, deque()
        for pending in waiting:
            if not pending.done:
                pending.error = error
                pending.answer()
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


class TcpTransport:
    """Connects lazily, authenticates with ``token`` when given, and reconnects on the call
    after a lost connection; a call lost before it was written is sent again once. A call
    that times out closes its connection: its reply could no longer be told apart from the
    next one's. A ``pull`` whose caller is cancelled still takes its reply (for up to
    `SETTLE_S`), and gives back the jobs in it."""

    def __init__(self, host: str, port: int, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._main: _Connection | None = None
        self._main_lock = anyio.Lock()
        self._spare: list[_Connection] = []
        self._open: set[_Connection] = set()
        """Every connection not yet dropped (connecting, in use, spare): `close` fails the
        calls on all of them at once."""
        self._closed = True

    @property
    def _address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        closing = ClientConnectionError("client closed")
        main, self._main = self._main, None
        self._spare = []
        for conn in {*([main] if main else []), *self._open}:
            await conn.drop(closing)

    async def call(self, cmd: str, params: dict[str, Any], wait_s: float = 0) -> dict[str, Any]:
        line = _line({"cmd": cmd, **params})
        try:
            return await self._call(cmd, params, line, wait_s)
        except _NotSent:
            return await self._call(cmd, params, line, wait_s)

    async def _call(self, cmd: str, params: dict[str, Any], line: bytes, wait_s: float) -> dict[str, Any]:
        conn: _Connection | None = None
        pending: _Pending | None = None
        try:
            with anyio.move_on_after(self.timeout_s + wait_s):
                conn = await (self._long_poll_connection() if wait_s > 0 else self._main_connection())
                pending = await conn.send(line)
                await conn.wait(pending)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if cmd == "pull" and conn is not None and pending is not None:
                    await self._settle(conn, pending, params, wait_s > 0)
                elif wait_s > 0 and conn is not None:
                    await conn.drop(ClientConnectionError("call cancelled"))
            raise
        except BaseException:
            if wait_s > 0 and conn is not None:
                await conn.drop(ClientConnectionError("call failed"))
            raise
        if pending is None or not pending.done:  # timed out, connecting or waiting
            error = ClientConnectionError(f"no reply from {self._address} within {self.timeout_s + wait_s:g} s")
            if conn is not None:
                await conn.drop(error)
            raise error
        if wait_s > 0 and conn is not None:
            await self._keep_spare(conn)
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    async def _settle(self, conn: _Connection, pending: _Pending, params: dict[str, Any], long_poll: bool) -> None:
        """A cancelled pull: take its reply anyway, then give back the jobs it claimed. A
        long-poll's connection says it sends no more, which ends the server's wait."""
        with anyio.move_on_after(min(self.timeout_s, SETTLE_S)):  # all of it: what is left, the stall sweep takes back
            if long_poll and not pending.done:
                await conn.end_sending()
            await conn.wait(pending)
            if pending.reply is not None:
                await give_back(self, pending.reply, params.get("worker_id"))
        if long_poll:
            await conn.drop(ClientConnectionError("call cancelled"))

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

    async def _keep_spare(self, conn: _Connection) -> None:
        if conn.usable and not self._closed and len(self._spare) < MAX_SPARE:
            self._spare.append(conn)
        else:
            await conn.drop(ClientConnectionError("not needed"))

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ClientConnectionError("client is not open: use 'async with conveyor.connect(...)'")
        try:
            stream = await anyio.connect_tcp(self.host, self.port)
        except OSError as exc:
            raise ClientConnectionError(f"cannot connect to {self._address}: {exc.strerror or exc}") from None
        if self._closed:  # closed while connecting
            await stream.aclose()
            raise ClientConnectionError("client closed")
        conn = _Connection(stream, self._address, self.timeout_s, self._open.discard)
        self._open.add(conn)
        if self.token is not None:
            try:
                auth = await conn.send(_line({"cmd": "auth", "token": self.token}))
                await conn.wait(auth)
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
