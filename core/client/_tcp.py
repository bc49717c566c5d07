"""`TcpTransport`: one connection, pipelined — concurrent calls are written back to back and
their replies, which come in order, are matched to them in order."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup

from ..errors import ClientConnectionError, error_for_code

READ_CHUNK = 65536


class _Pending:
    __slots__ = ("done", "reply", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None


class TcpTransport:
    """Connects lazily, authenticates with ``token`` when given, and reconnects on the call
    after a lost connection. A call that times out closes the connection: its reply could no
    longer be told apart from the next one's."""

    def __init__(self, host: str, port: int, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._stream: SocketStream | None = None
        self._waiting: deque[_Pending] = deque()
        self._send_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._closed = False

    async def open(self) -> None:
        self._closed = False
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()

    async def close(self) -> None:
        self._closed = True
        await self._drop(ClientConnectionError("client closed"))
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def call(self, cmd: str, params: dict[str, Any], wait_s: float = 0) -> dict[str, Any]:
        line = json.dumps({"cmd": cmd, **params}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        pending = _Pending()
        with anyio.move_on_after(self.timeout_s + wait_s) as timer:
            async with self._send_lock:
                stream = self._stream or await self._connect()
                self._waiting.append(pending)
                try:
                    await stream.send(line)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    await self._drop(ClientConnectionError(f"connection to {self._address} lost: {exc!r}"))
            await pending.done.wait()
        if timer.cancelled_caught:
            await self._drop(
                ClientConnectionError(f"no reply from {self._address} within {self.timeout_s + wait_s:g} s")
            )
        if pending.error is not None:
            raise pending.error
        assert pending.reply is not None
        return pending.reply

    @property
    def _address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def _connect(self) -> SocketStream:
        if self._closed or self._tg is None:
            raise ClientConnectionError("client is not open: use 'async with conveyor.connect(...)'")
        try:
            stream = await anyio.connect_tcp(self.host, self.port)
        except OSError as exc:
            raise ClientConnectionError(f"cannot connect to {self._address}: {exc.strerror or exc}") from None
        self._stream = stream
        self._tg.start_soon(self._read, stream)
        if self.token is not None:
            auth = _Pending()
            self._waiting.append(auth)
            await stream.send(json.dumps({"cmd": "auth", "token": self.token}).encode() + b"\n")
            await auth.done.wait()
            if auth.error is not None:
                await self._drop(auth.error)
                raise auth.error
        return stream

    async def _read(self, stream: SocketStream) -> None:
        buffer = bytearray()
        error: BaseException = ClientConnectionError(f"{self._address} closed the connection")
        try:
            while True:
                chunk = await stream.receive(READ_CHUNK)
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = bytes(buffer[:end]), buffer[end + 1 :]
                    self._resolve(json.loads(line))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except ValueError as exc:
            error = ClientConnectionError(f"{self._address} sent a line that is not JSON: {exc}")
        if self._stream is stream:
            await self._drop(error)

    def _resolve(self, reply: Any) -> None:
        if not self._waiting:
            raise ValueError("a reply no request was waiting for")
        pending = self._waiting.popleft()
        if isinstance(reply, dict) and reply.get("ok") is True:
            pending.reply = reply
        else:
            error = reply.get("error") if isinstance(reply, dict) else None
            if not isinstance(error, dict):
                error = {"code": "INTERNAL_ERROR", "message": f"malformed reply: {str(reply)[:200]}"}
            pending.error = error_for_code(str(error.get("code")), str(error.get("message")), error.get("details"))
        pending.done.set()

    async def _drop(self, error: BaseException) -> None:
        """Close the connection and fail every call still waiting on it."""
        stream, self._stream = self._stream, None
        waiting, self._waiting = self._waiting, deque()
        for pending in waiting:
            pending.error = error
            pending.done.set()
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
