"""Reading a JSON request body safely: media type, size limit before parsing, strict JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from conveyor import wire
from conveyor.errors import LimitExceededError, ValidationError

DISCARD_LIMITS = 4
DISCARD_MIN_BYTES = 64 * 1024 * 1024
DISCARD_IDLE_S = 1.0
DISCARD_S = 10.0


class UnsupportedMediaTypeError(ValidationError):
    """A body sent as something other than JSON: ``VALIDATION_ERROR`` with HTTP 415."""

    http_status = 415


async def read_json(request: Request, limit: int) -> Any:
    """The parsed body, or None when the request has none.

    A declared ``Content-Length`` over ``limit`` is refused from the headers, a chunked body as
    soon as it passes ``limit``; either way the rest is read and dropped (`_discard_rest`)
    unless the client waits for ``100 Continue``. NaN/Infinity, invalid UTF-8 and nesting too
    deep to parse are refused as malformed JSON.
    """
    headers = request.headers
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ValidationError("Content-Length must be a number of bytes", field="body")
        if int(declared) > limit:
            if int(declared) <= _discard_bound(limit) and "100-continue" not in headers.get("expect", "").lower():
                await _discard_rest(request.stream(), limit)
            raise _too_large(int(declared), limit)
        if int(declared) == 0:
            return None
    elif "transfer-encoding" not in headers:
        return None
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise UnsupportedMediaTypeError(
            f"request body must be JSON: send 'Content-Type: application/json' (got {media_type or 'none'!r})",
            field="body",
            details={"content_type": media_type},
        )
    if declared is not None:
        raw = await request.body()
    else:
        chunks, size = [], 0
        stream = request.stream()
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await _discard_rest(stream, limit)
                raise _too_large(size, limit, at_least=True)
            chunks.append(chunk)
        raw = b"".join(chunks)
    if not raw:
        return None
    try:
        return wire.loads(raw)
    except ValueError as exc:
        raise ValidationError(f"request body is not valid JSON: {exc}", field="body") from None


async def _discard_rest(stream: AsyncIterator[bytes], limit: int) -> None:
    """Read and drop what the client is still sending: closing on unread input resets the
    connection, and a client still writing its body (httpx does) would see the reset instead
    of the 413. Bounded: `_discard_bound` bytes, `DISCARD_S` in all, and `DISCARD_IDLE_S`
    without a byte; past a bound the connection closes on what is left."""
    dropped, bound = 0, _discard_bound(limit)
    give_up = anyio.current_time() + DISCARD_S
    with anyio.CancelScope(deadline=min(anyio.current_time() + DISCARD_IDLE_S, give_up)) as scope:
        try:
            async for chunk in stream:
                dropped += len(chunk)
                if dropped > bound:
                    return
                scope.deadline = min(anyio.current_time() + DISCARD_IDLE_S, give_up)
        except ClientDisconnect:
            return  # gone: nothing left to protect the answer from


def _discard_bound(limit: int) -> int:
    """The most of an oversize body read only to be dropped."""
    return max(DISCARD_LIMITS * limit, DISCARD_MIN_BYTES)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> LimitExceededError:
    amount = f"more than {limit}" if at_least else str(size)
    return LimitExceededError(
        f"request body is {amount} bytes; the limit is {limit} bytes",
        field="body",
        details={"limit": limit, **({} if at_least else {"size": size})},
    )
