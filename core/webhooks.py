"""Webhook registrations: what a receiver asked for, validated once, stored by `Storage`.

The kernel owns registrations (so they are the same over HTTP, TCP and the embedded API and
survive restarts in the database); delivering them is the built-in ``webhooks`` event-sink
plugin's job. The signed payload format is defined here so receivers and tests share it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from . import _limits as limits
from ._ids import uuid7
from .errors import ValidationError
from .models import EVENT_NAMES, Event, normalize_event_name

MAX_URL_BYTES = 2048
MAX_SECRET_BYTES = 1024
MAX_FILTERS = 100
SIGNATURE_HEADERS = ("X-Conveyor-Signature", "X-RustQueue-Signature")
EVENT_HEADERS = ("X-Conveyor-Event", "X-RustQueue-Event")
ID_HEADERS = ("X-Conveyor-Webhook-Id", "X-RustQueue-Webhook-Id")


class WebhookSpec(BaseModel):
    """A registration request: ``POST /api/v1/webhooks``. Empty ``events`` or ``queues`` mean all."""

    model_config = ConfigDict(extra="forbid")

    url: StrictStr
    events: list[StrictStr] = Field(default_factory=list, max_length=MAX_FILTERS)
    queues: list[StrictStr] = Field(default_factory=list, max_length=MAX_FILTERS)
    secret: StrictStr | None = None


class Webhook(BaseModel):
    """A stored registration. ``secret`` is kept for signing and never leaves the server:
    `to_wire` says only whether there is one."""

    id: UUID
    url: str
    events: list[str]
    queues: list[str]
    secret: str | None = Field(default=None, repr=False)
    created_at: datetime

    @property
    def has_secret(self) -> bool:
        """As `conveyor.wire.WebhookInfo` (what clients get) says it."""
        return self.secret is not None

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "url": self.url,
            "events": self.events,
            "queues": self.queues,
            "has_secret": self.has_secret,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }

    def wants(self, event: Event) -> bool:
        """Whether this webhook is sent ``event``: one raised since it was registered, of the
        kinds and queues it asked for."""
        return (
            event.timestamp >= self.created_at
            and (not self.events or event.event in self.events)
            and (not self.queues or event.queue in self.queues)
        )


def build_webhook(spec: WebhookSpec | dict[str, Any], now_ms: int, allowed_hosts: list[str]) -> Webhook:
    """Validate a registration; errors name the field (``events[1]``, ``url``)."""
    spec = limits.parse(WebhookSpec, spec)
    url = check_url(spec.url, allowed_hosts)
    events: list[str] = []
    for index, name in enumerate(spec.events):
        try:
            dotted = normalize_event_name(name)
        except ValueError as exc:
            raise ValidationError(f"events[{index}]: {exc}", field=f"events[{index}]") from None
        if dotted not in events:
            events.append(dotted)
    queues: list[str] = []
    for index, queue in enumerate(spec.queues):
        limits.check_queue_name(queue, f"queues[{index}]")
        if queue not in queues:
            queues.append(queue)
    if spec.secret is not None:
        if not spec.secret:
            raise ValidationError("secret must not be empty (omit it to send unsigned payloads)", field="secret")
        limits.check_bytes("secret", spec.secret, MAX_SECRET_BYTES)
    return Webhook(
        id=uuid7(),
        url=url,
        events=events,
        queues=queues,
        secret=spec.secret,
        created_at=datetime.fromtimestamp(now_ms / 1000, tz=UTC),
    )


def check_url(url: str, allowed_hosts: list[str]) -> str:
    """An absolute http(s) URL with a host, on the allow-list when there is one, that the
    HTTP client will accept when it is time to deliver."""
    limits.check_bytes("url", url, MAX_URL_BYTES)
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ValidationError(f"url {url[:100]!r} contains spaces or control characters", field="url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises for a malformed port
        httpx.Request("POST", url)  # what delivery will build, IDNA host names included
    except (ValueError, httpx.InvalidURL) as exc:
        raise ValidationError(f"url {url[:100]!r} is malformed: {exc}", field="url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValidationError(
            f"url must use http or https, got {parts.scheme or 'no scheme'!r} in {url[:100]!r}", field="url"
        )
    if not host:
        raise ValidationError(f"url {url[:100]!r} has no host", field="url")
    if allowed_hosts and not host_allowed(host, allowed_hosts):
        raise ValidationError(
            f"url host {host!r} is not in webhook_allowed_hosts ({', '.join(allowed_hosts)})",
            field="url",
            details={"host": host},
        )
    return url


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in allowed_hosts:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def redacted(url: str) -> str:
    """``scheme://host[:port]`` of a webhook URL, for logs: paths and user info often hold
    tokens (Slack-style hook URLs)."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<malformed url>"


def payload(webhook: Webhook, event: Event) -> dict[str, Any]:
    """The JSON a receiver gets: ``{"event", "webhook_id", "timestamp", "data": {job_id, queue, ...}}``."""
    wire = event.to_wire()
    return {
        "event": event.event,
        "webhook_id": str(webhook.id),
        "timestamp": wire["timestamp"],
        "data": {"job_id": wire["job_id"], "queue": event.queue, **event.data},
    }


def signature(secret: str, body: bytes) -> str:
    """The ``X-Conveyor-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(webhook: Webhook, event: Event, body: bytes) -> dict[str, str]:
    """Event, id and (with a secret) signature headers, under Conveyor's and RustQueue's names."""
    values: dict[str, str] = {"Content-Type": "application/json"}
    for name in EVENT_HEADERS:
        values[name] = event.event
    for name in ID_HEADERS:
        values[name] = str(webhook.id)
    if webhook.secret is not None:
        signed = signature(webhook.secret, body)
        for name in SIGNATURE_HEADERS:
            values[name] = signed
    return values


__all__ = [
    "EVENT_NAMES", "Webhook", "WebhookSpec", "build_webhook", "check_url", "headers", "host_allowed", "payload",
    "redacted", "signature",
]  # fmt: skip
