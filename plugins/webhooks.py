"""Built-in ``webhooks`` plugin: POST each lifecycle event to the registered receivers.

An event sink like any third-party one (block it with ``disable_plugins=["webhooks"]``). Its
scope is ``"once"``: with several nodes on one PostgreSQL each event is delivered by exactly one
of them. Registrations live in the database (`Conveyor.add_webhook`); this sink re-reads them at
most once a second, and at once after a change made through its own `Conveyor`.

Delivery never holds up the queue: `handle` only hands each matching (webhook, event) pair to
the sink's own task group, which sends it with ``webhook_concurrency`` requests in flight, a
``webhook_timeout_s`` timeout per attempt and ``webhook_retries`` retries with exponential
backoff after any non-2xx answer or network error. At most ``webhook_max_pending`` deliveries
wait or retry at once; beyond that new ones are dropped, counted and logged. A webhook
deleted while a delivery waits to retry gets no more attempts. On shutdown,
pending deliveries get the host's drain time (5 s); what is still pending then is lost (it is
not written to the database). Logs name a webhook by id and ``scheme://host`` only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
import httpx

from conveyor.hookspecs import hookimpl
from conveyor.models import Event
from conveyor.webhooks import Webhook, headers, host_allowed, payload, redacted

if TYPE_CHECKING:
    from conveyor import Conveyor

log = logging.getLogger("conveyor.webhooks")
CACHE_S = 1.0
"""Registrations made on another node are picked up within this long."""
LOG_EVERY_S = 10.0


@hookimpl
def conveyor_event_sinks(app: Conveyor) -> WebhookSink:
    return WebhookSink(app)


class WebhookSink:
    name = "webhooks"
    scope = "once"

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        settings = app.settings
        self.timeout_s = settings.webhook_timeout_s
        self.retries = settings.webhook_retries
        self.retry_base_s = settings.webhook_retry_base_ms / 1000
        self.max_pending = settings.webhook_max_pending
        self.pending = 0
        self.dropped = 0
        self._limiter = anyio.CapacityLimiter(settings.webhook_concurrency)
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Webhook, Event]](self.max_pending)
        self._finished = anyio.Event()
        self._allowed_hosts = settings.webhook_allowed_hosts
        self._cache: list[Webhook] = []
        self._loaded_at = float("-inf")
        self._version = -1
        self._last_warning = float("-inf")

    @property
    def idle(self) -> bool:
        """No webhook is registered (as read less than ``CACHE_S`` ago): on a shared database
        the dispatcher then claims this sink's events in bulk, not on every append."""
        return (
            not self._cache
            and self._version == self.app.webhooks_version
            and (time.monotonic() - self._loaded_at < CACHE_S)
        )

    async def handle(self, event: Event) -> None:
        await self.handle_batch([event])

    async def handle_batch(self, events: Sequence[Event]) -> None:
        for webhook in await self._registrations():
            for event in events:
                if webhook.wants(event):
                    self._schedule(webhook, event)

    async def run(self) -> None:
        """Send what `handle` scheduled until `aclose`, then finish what is under way."""
        timeout = httpx.Timeout(self.timeout_s)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
                anyio.create_task_group() as tg,
                self._receive,
            ):
                async for webhook, event in self._receive:
                    tg.start_soon(self._deliver, client, webhook, event)
        finally:
            self._finished.set()

    async def aclose(self) -> None:
        """On shutdown, after the last events were handed over: let pending deliveries finish
        (the host stops waiting at its drain deadline, and what is left is lost)."""
        self._send.close()
        await self._finished.wait()

    async def _registrations(self) -> list[Webhook]:
        """The registered webhooks, re-read after a change or every ``CACHE_S``. If the read
        fails, the last list serves (and the next batch tries again): a database hiccup must
        not cost a whole batch of deliveries."""
        now, version = time.monotonic(), self.app.webhooks_version
        if self._version != version or now - self._loaded_at >= CACHE_S:
            try:
                self._cache = await self.app.webhooks()
            except Exception:  # noqa: BLE001 - logged; the cached list is used meanwhile
                log.exception("could not read the webhook registrations; using the last ones read")
                return self._cache
            self._version, self._loaded_at = version, now
        return self._cache

    def _schedule(self, webhook: Webhook, event: Event) -> None:
        if self.pending < self.max_pending:
            try:
                self._send.send_nowait((webhook, event))  # holds max_pending: never full here
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # shutting down
            else:
                self.pending += 1
                return
        self.dropped += 1
        self.app.metrics.inc("webhook_deliveries_total", "dropped")
        self._warn("%d webhook deliveries pending: dropped %s for %s", self.pending, event.event, redacted(webhook.url))

    async def _deliver(self, client: httpx.AsyncClient, webhook: Webhook, event: Event) -> None:
        body = json.dumps(payload(webhook, event), separators=(",", ":")).encode()
        sent_headers = headers(webhook, event, body)
        try:
            if self._allowed_hosts and not host_allowed(httpx.URL(webhook.url).host, self._allowed_hosts):
                # registered before the allow-list was tightened: never sent
                self.app.metrics.inc("webhook_deliveries_total", "failed")
                self._warn("webhook %s: host %s is no longer allowed", webhook.id, redacted(webhook.url))
                return
            for attempt in range(self.retries + 1):
                if attempt:
                    await anyio.sleep(self.retry_base_s * 2 ** (attempt - 1))
                    if not any(w.id == webhook.id for w in await self._registrations()):
                        return  # deleted meanwhile: its receiver asked for nothing more
                    self.app.metrics.inc("webhook_deliveries_total", "retried")
                async with self._limiter:
                    problem: str | None = "timeout"
                    with anyio.move_on_after(self.timeout_s):  # the whole attempt, not each read
                        problem = await _post(client, webhook.url, body, sent_headers)
                if problem is None:
                    self.app.metrics.inc("webhook_deliveries_total", "delivered")
                    return
            self.app.metrics.inc("webhook_deliveries_total", "failed")
            self._warn(
                "webhook %s (%s) gave up on %s after %d attempts: %s",
                webhook.id, redacted(webhook.url), event.event, attempt + 1, problem,
            )  # fmt: skip
        finally:
            self.pending -= 1

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= LOG_EVERY_S:
            self._last_warning = now
            log.warning(message, *args)


async def _post(client: httpx.AsyncClient, url: str, body: bytes, sent_headers: dict[str, str]) -> str | None:
    """None when the receiver answered 2xx, else what went wrong (its type only: error texts
    may repeat the URL, and with it a token)."""
    try:
        response = await client.post(url, content=body, headers=sent_headers)
    except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt, never a crash
        return type(exc).__name__
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"
