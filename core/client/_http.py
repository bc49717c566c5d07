"""`HttpTransport`: each command as its REST route (DESIGN.md §5), over one pooled httpx client."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from .. import _limits as limits
from ..errors import ClientConnectionError, ValidationError, error_for_code
from ._api import give_back


def _path(value: Any, field: str) -> str:
    """A free-text path segment (a flow id); an empty one cannot be sent, so it is refused
    here as the server would refuse it. Slashes are escaped (the flow route takes them), and
    so is a segment of dots, which URL normalization would otherwise resolve away."""
    if value is None or value == "":
        raise ValidationError(f"{field} must be a non-empty string", field=field)
    text = str(value)
    return "%2E" * len(text) if not text.strip(".") else quote(text, safe="")


def _body(value: Any) -> bytes:
    """JSON as the TCP client sends it: UTF-8, and text UTF-8 cannot hold (a lone surrogate)
    escaped, so the server refuses it by field as the embedded API does."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def _route(cmd: str, p: dict[str, Any]) -> tuple[str, str, Any, dict[str, Any] | None]:
    """(method, path, JSON body or None, query) for a command; ``p`` loses what goes in the path."""
    if cmd in ("push", "push_batch", "pull", "stats", "queue_pause", "queue_resume", "dlq"):
        queue = limits.check_queue_name(p.pop("queue", None))
        if cmd == "push":
            return "POST", f"/queues/{queue}/jobs", p, None
        if cmd == "push_batch":
            return "POST", f"/queues/{queue}/jobs", p.get("jobs"), None
        if cmd in ("pull", "dlq"):
            return "GET", f"/queues/{queue}/{'jobs' if cmd == 'pull' else 'dlq'}", None, p
        if cmd == "stats":
            return "GET", f"/queues/{queue}/stats", None, None
        return "POST", f"/queues/{queue}/{cmd.removeprefix('queue_')}", None, None
    if cmd in ("ack", "fail", "cancel", "progress", "heartbeat", "release", "get"):
        job = limits.check_job_id(p.pop("id", None))
        if cmd == "get":
            return "GET", f"/jobs/{job}", None, None
        return "POST", f"/jobs/{job}/{cmd}", p or None, None
    if cmd == "ack_batch":
        return "POST", "/jobs/ack-batch", p, None
    if cmd == "queues":
        return "GET", "/queues", None, None
    if cmd == "flow":
        return "GET", f"/flows/{_path(p.get('flow_id'), 'flow_id')}", None, None
    if cmd == "submit_flow":
        return "POST", "/flows", p, None
    if cmd == "webhook_create":
        return "POST", "/webhooks", p, None
    if cmd == "webhook_list":
        return "GET", "/webhooks", None, None
    if cmd in ("webhook_get", "webhook_delete"):
        hook = limits.check_webhook_id(p.pop("id", None))
        return ("GET" if cmd == "webhook_get" else "DELETE"), f"/webhooks/{hook}", None, None
    if cmd == "schedule_create":
        return "POST", "/schedules", p, None
    if cmd == "schedule_list":
        return "GET", "/schedules", None, None
    if cmd in ("schedule_get", "schedule_delete", "schedule_pause", "schedule_resume"):
        name, action = limits.check_queue_name(p.pop("name", None), "name"), cmd.removeprefix("schedule_")
        if action in ("pause", "resume"):
            return "POST", f"/schedules/{name}/{action}", None, None
        return ("GET" if action == "get" else "DELETE"), f"/schedules/{name}", None, None
    raise ValueError(f"no HTTP route for command {cmd!r}")


_JSON = {"Content-Type": "application/json"}


class HttpTransport:
    """Keep-alive connections to ``base_url`` (``http://host:6790``), bearer ``token`` when
    given. httpx reconnects by itself; a failed request raises `ClientConnectionError`."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/api/v1")  # the API's own address works too
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self._headers = headers
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.base_url + "/api/v1", headers=self._headers, timeout=self.timeout_s,
            limits=httpx.Limits(max_keepalive_connections=64, max_connections=256),
        )  # fmt: skip

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def call(self, cmd: str, params: dict[str, Any], wait_s: float = 0) -> dict[str, Any]:
        if self._client is None:
            raise ClientConnectionError("client is not open: use 'async with conveyor.connect(...)'")
        method, path, body, query = _route(cmd, dict(params))
        request = self._client.build_request(
            method, path, params=query, timeout=self.timeout_s + wait_s,
            content=None if body is None else _body(body), headers=None if body is None else _JSON,
        )  # fmt: skip
        if cmd == "pull" and not wait_s:
            return await self._pull(request, params)
        return await self._send(request)

    async def _pull(self, request: httpx.Request, params: dict[str, Any]) -> dict[str, Any]:
        """A pull is not cut short by its caller's cancellation, which could land after the
        server claimed the jobs: it takes its reply (within the client's timeout), then gives
        them back. (A long-poll's client disconnects instead: the server gives them back.)"""
        cancelled = anyio.get_cancelled_exc_class()
        with anyio.CancelScope(shield=True):
            reply = await self._send(request)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except cancelled:
            with anyio.CancelScope(shield=True):
                await give_back(self, reply, params.get("worker_id"))
            raise
        return reply

    async def _send(self, request: httpx.Request) -> dict[str, Any]:
        assert self._client is not None
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            raise ClientConnectionError(f"{request.method} {request.url} failed: {exc!r}") from None
        try:
            reply = response.json()
        except ValueError:
            reply = None
        if response.is_success and isinstance(reply, dict):
            return reply
        error = reply.get("error") if isinstance(reply, dict) else None
        if not isinstance(error, dict):
            error = {"code": "INTERNAL_ERROR", "message": f"HTTP {response.status_code}: {response.text[:200]}"}
        raise error_for_code(
            str(error.get("code")), str(error.get("message")), error.get("details"), response.status_code
        )
