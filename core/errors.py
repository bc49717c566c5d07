"""The error hierarchy: one root, each subclass carrying its wire code and HTTP status.

Every failure that reaches a caller (embedded API, HTTP, TCP) is a `ConveyorError`, so both
protocols can render the same envelope ``{"code", "message", "details"}`` from it, and clients
can rebuild the same exception class from the code with `error_for_code`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar


class ConveyorError(Exception):
    """Root of every error Conveyor raises on purpose."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class JobNotFoundError(ConveyorError):
    code = "JOB_NOT_FOUND"
    http_status = 404


class ScheduleNotFoundError(ConveyorError):
    code = "SCHEDULE_NOT_FOUND"
    http_status = 404


class WebhookNotFoundError(ConveyorError):
    code = "WEBHOOK_NOT_FOUND"
    http_status = 404


class InvalidStateError(ConveyorError):
    """The job exists but is not in a state that allows the operation."""

    code = "INVALID_STATE"
    http_status = 409


class DuplicateKeyError(ConveyorError):
    """A non-terminal job with the same unique key already exists in the queue."""

    code = "DUPLICATE_KEY"
    http_status = 409


class QueuePausedError(ConveyorError):
    code = "QUEUE_PAUSED"
    http_status = 503


class RateLimitedError(ConveyorError):
    code = "RATE_LIMITED"
    http_status = 429


class UnauthorizedError(ConveyorError):
    code = "UNAUTHORIZED"
    http_status = 401


class ValidationError(ConveyorError):
    """Bad input. ``field`` names the offending field (dotted path) when there is one."""

    code = "VALIDATION_ERROR"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, details: dict[str, Any] | None = None) -> None:
        details = dict(details or {})
        if field is not None:
            details.setdefault("field", field)
        super().__init__(message, details=details)
        self.field = field


class LimitExceededError(ValidationError):
    """A size limit was exceeded: same wire code as `ValidationError`, HTTP 413."""

    http_status = 413


class ParseError(ConveyorError):
    """A TCP line that is not a JSON object."""

    code = "PARSE_ERROR"
    http_status = 400


class UnknownCommandError(ConveyorError):
    code = "UNKNOWN_COMMAND"
    http_status = 400


class ClientConnectionError(ConveyorError):
    """A client could not reach the server, or lost the connection before the reply. The
    request may or may not have run; the client reconnects on its next call."""

    code = "CONNECTION_ERROR"
    http_status = 503


class StorageError(ConveyorError):
    """A backend failure, translated at the storage boundary."""


class StorageUnavailableError(StorageError):
    """No connection to the storage's database server could be made when opening: refused,
    timed out, no such host, and also a login or database the server refused (PostgreSQL does
    not tell these apart by code; the message names the cause). The command line reports it
    as unreachable, not as a refusal of the command."""


class PluginError(ConveyorError):
    """A plugin could not be loaded or broke its hook contract."""


_BY_CODE: dict[str, type[ConveyorError]] = {
    cls.code: cls
    for cls in (
        ConveyorError,
        JobNotFoundError,
        ScheduleNotFoundError,
        WebhookNotFoundError,
        InvalidStateError,
        DuplicateKeyError,
        QueuePausedError,
        RateLimitedError,
        UnauthorizedError,
        ValidationError,
        ParseError,
        UnknownCommandError,
    )
}


def error_for_code(
    code: str, message: str, details: dict[str, Any] | None = None, http_status: int | None = None
) -> ConveyorError:
    """Rebuild the exception a server raised from its wire envelope. A code this kernel does
    not know (``NOT_FOUND`` for a route, or a newer server's) keeps its code and status."""
    cls = _BY_CODE.get(code) or _other_code(code, http_status)
    if not isinstance(details, dict):
        details = None  # a server's malformed envelope must not break the error it reports
    if cls is ValidationError and (http_status == 413 or "limit" in (details or {})):
        cls = LimitExceededError  # size-limit errors carry their limit (TCP has no status to tell)
    if issubclass(cls, ValidationError):
        field = (details or {}).get("field")
        return cls(message, field=field if isinstance(field, str) else None, details=details)
    return cls(message, details=details)


_OTHER_CODES: dict[tuple[str, int], type[ConveyorError]] = {}


def _other_code(code: str, http_status: int | None) -> type[ConveyorError]:
    if not re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", code) or len(_OTHER_CODES) >= 64:
        return ConveyorError  # not a wire code, or a server inventing codes without end
    key = (code, http_status or 500)
    if key not in _OTHER_CODES:
        name = "".join(part.title() for part in code.split("_")) + "Error"
        _OTHER_CODES[key] = type(name, (ConveyorError,), {"code": code, "http_status": key[1], "__module__": __name__})
    return _OTHER_CODES[key]
