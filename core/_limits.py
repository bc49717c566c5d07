"""Input limits and the one place that turns bad input into `ValidationError`.

Size limits are measured on UTF-8 bytes of the serialized JSON, the same bytes that are stored,
so a value that passes here fits the database and the wire.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar
from uuid import UUID

import pydantic
from pydantic_core import from_json

from ._ids import uuid_from_int
from .errors import LimitExceededError, ValidationError

MAX_QUEUE_NAME_BYTES = 256
MAX_JOB_NAME_BYTES = 1024
MAX_DATA_BYTES = 1024 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_UNIQUE_KEY_BYTES = 1024
MAX_ERROR_BYTES = 10 * 1024
MAX_CUSTOM_ID_BYTES = 1024
MAX_TAG_BYTES = 256
MAX_LOG_MESSAGE_BYTES = 10 * 1024
MAX_LOG_ENTRIES = 1000
MAX_BATCH = 1000
MAX_PULL_COUNT = 1000
MAX_LIST_LIMIT = 1000
MAX_FLOW_JOBS = 100_000
MAX_WORKER_ID_BYTES = 256
MAX_WAIT_MS = 300_000
MAX_JSON_DEPTH = 200
"""Nesting levels in ``data``, ``result`` and ``metadata``: what the JSON parser and the
serializer of every protocol handle (a job nested deeper could be stored but never sent)."""

_QUEUE_NAME = re.compile(r"[A-Za-z0-9._:\-]+")

M = TypeVar("M", bound=pydantic.BaseModel)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_encode_text = json.encoder.encode_basestring
_c_encoder = getattr(json.encoder, "c_make_encoder", None)


def dumps(value: Any) -> str:
    """Compact JSON, the one serialization used for stored payloads. NaN and Infinity are
    refused: they are not JSON and would come back as something else.

    ``JSONEncoder.encode`` sets up a Python closure and reads a dozen attributes before it
    builds its C encoder, on every call; building the C encoder directly costs a third less
    (a list: 1.3 -> 0.9 µs), and a plain int needs no encoder at all. It gets its own cycle markers each call: a cyclic value is refused
    as circular, never recursed into (a raised recursion limit lets that overflow the C stack
    on Python 3.11), and no state is shared between threads."""
    if type(value) is str:
        return _encode_text(value)
    if type(value) is int:  # a plain int (not a bool or an IntEnum) is its repr, as json writes it
        return int.__repr__(value)
    if _c_encoder is None:  # a Python without the json C accelerator
        return _ENCODER.encode(value)
    encode = _c_encoder({}, _ENCODER.default, _encode_text, None, ":", ",", False, False, False)
    return "".join(encode(value, 0))


def printable(text: str) -> str:
    """``text`` safe to put in an error message: a lone surrogate (JSON can carry one) shown
    as its escape instead of making the reply unencodable."""
    return text.encode("utf-8", "backslashreplace").decode()


def check_bytes(field: str, text: str, limit: int) -> None:
    """A plain-text field: at most ``limit`` UTF-8 bytes and no NUL character (PostgreSQL text
    cannot hold one, and both backends must accept the same input)."""
    if "\x00" in text:
        raise ValidationError(f"{field} must not contain NUL characters", field=field)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \u escapes can carry
        raise ValidationError(f"{field} is not valid Unicode text (it holds a lone surrogate)", field=field) from None
    if size > limit:
        raise LimitExceededError(
            f"{field} is {size} bytes; the limit is {limit} bytes",
            field=field,
            details={"limit": limit, "size": size},
        )


def check_json_bytes(field: str, value: Any, limit: int) -> str:
    """Serialize ``value`` once, check its size and nesting and return the text to store."""
    try:
        text = dumps(value)
    except RecursionError:
        raise _too_deep(field) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field} is not JSON-serializable: {exc}", field=field) from exc
    check_bytes(field, text, limit)
    check_keys_survive(field, value, text)
    # Depth is at most the number of opening brackets (a few per job, usually): parse only
    # when there are enough of them to go that deep.
    if len(text) > 2 * MAX_JSON_DEPTH and text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        try:
            from_json(text)  # stops at MAX_JSON_DEPTH levels, in Rust
        except ValueError as exc:
            if "recursion limit" in str(exc):
                raise _too_deep(field) from None
            raise
    return text


def check_keys_survive(field: str, value: Any, text: str) -> None:
    """Refuse ``value`` (serialized as ``text``) if two keys of one of its dicts become the
    same JSON string (``1`` and ``"1"``): the text would hold the key twice, and reading it
    back would keep one value. A value without a dict (no ``{`` in its text) has no keys: the
    scan is skipped for the scalars most jobs carry (it ran twice per job: data and result)."""
    if "{" in text and keys_may_collide(text) and (key := _colliding_key(value)) is not None:
        raise ValidationError(
            f"{field} has two keys that both become {key!r} in JSON; one of them would be lost", field=field
        )


def keys_may_collide(text: str) -> bool:
    """Whether JSON ``text`` holds a key written from an int, float, bool or None (or a str key
    that looks like one): only then can two keys of a dict have collided."""
    return _KEY_FROM_NON_STR.search(text) is not None


_KEY_FROM_NON_STR = re.compile(r'"(?:-?[0-9][0-9.e+-]*|true|false|null)":')
"""How json writes an int, float, bool or None key; text without such a key cannot hold two
keys that collide once turned into strings. A str key can match too: `_colliding_key` decides."""


def _colliding_key(value: Any) -> str | None:
    """A key that two keys of one dict in ``value`` both become in JSON (``1`` and ``"1"``)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(type(key) is str for key in item):
                seen: set[str] = set()
                for key in item:
                    text = key if isinstance(key, str) else _json_key(key)
                    if text in seen:
                        return text
                    seen.add(text)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def _json_key(key: Any) -> str:
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    return float.__repr__(key) if isinstance(key, float) else int.__repr__(key)


def _too_deep(field: str) -> LimitExceededError:
    return LimitExceededError(
        f"{field} nests deeper than {MAX_JSON_DEPTH} levels", field=field, details={"limit": MAX_JSON_DEPTH}
    )


def check_queue_name(queue: Any, field: str = "queue") -> str:
    if not isinstance(queue, str):
        raise ValidationError(f"{field} must be a string, got {type(queue).__name__}", field=field)
    check_bytes(field, queue, MAX_QUEUE_NAME_BYTES)
    if not _QUEUE_NAME.fullmatch(queue):
        raise ValidationError(
            f"{field} {queue[:64]!r} is invalid: use 1-{MAX_QUEUE_NAME_BYTES} bytes of letters, digits and . _ : -",
            field=field,
        )
    if not queue.strip("."):
        raise ValidationError(
            f"{field} {queue!r} is invalid: it must not be only dots (it appears in URLs)", field=field
        )
    return queue


def check_count(value: Any, field: str, maximum: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer", field=field)
    if not minimum <= value <= maximum:
        raise ValidationError(f"{field} must be between {minimum} and {maximum}, got {value}", field=field)
    return value


def check_pull(queue: Any, count: Any, wait_ms: Any) -> None:
    """A pull's arguments (the embedded API and the clients check them alike: HTTP's query
    string would turn ``"5"`` into 5)."""
    check_queue_name(queue)
    check_count(count, "count", MAX_PULL_COUNT)
    check_count(wait_ms, "wait_ms", MAX_WAIT_MS, minimum=0)


def check_progress(progress: Any) -> None:
    """A number (NaN is not; infinities are, and are clamped to 0-100 like any other)."""
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or progress != progress:
        raise ValidationError("progress must be a number from 0 to 100", field="progress")


_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def canonical_job_id(value: Any) -> UUID | None:
    """The id ``value`` writes in the form ``str(UUID)`` gives (lowercase hex, hyphenated), else
    None: the form clients echo back (ack, fail), made into a `UUID` ~3x faster than ``UUID()``
    does. One compiled match: ``int(digits, 16)`` alone would also take a sign, whitespace,
    underscores and non-ASCII digits, which are not this form."""
    if type(value) is str and _CANONICAL_ID(value):
        return uuid_from_int(int(value.replace("-", ""), 16))
    return None


def check_job_id(value: Any, field: str = "id") -> UUID:
    if isinstance(value, UUID):
        return value
    if (canonical := canonical_job_id(value)) is not None:
        return canonical
    if isinstance(value, str):
        try:
            return UUID(value)  # the other forms it takes: braces, urn:uuid:, uppercase, no hyphens
        except ValueError:
            pass
    raise ValidationError(f"{field} must be a job UUID, got {str(value)[:64]!r}", field=field)


def check_webhook_id(value: Any) -> UUID:
    try:
        return check_job_id(value)
    except ValidationError:
        raise ValidationError(f"id must be a webhook UUID, got {str(value)[:64]!r}", field="id") from None


def check_optional_text(field: str, value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string, got {type(value).__name__}", field=field)
    check_bytes(field, value, limit)
    return value


def parse(model: type[M], value: Any, what: str = "") -> M:
    """Validate ``value`` into ``model``; errors name the dotted path of the first bad field."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, prefix=what) from None


def validation_error(exc: pydantic.ValidationError, prefix: str = "") -> ValidationError:
    errors: list[dict[str, str | None]] = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = printable(".".join(str(p) for p in err["loc"] if p not in ("function-before",)))
        path = ".".join(p for p in (prefix, loc) if p)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        errors.append({"field": path or None, "message": message})
    first = errors[0]
    field, message = first["field"], str(first["message"])
    text = f"{field}: {message}" if field else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return ValidationError(text, field=field, details={"errors": errors})
