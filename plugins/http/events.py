"""``GET /api/v1/events`` (WebSocket), Prometheus text (``/metrics``), the ``/dashboard`` page
and HTTP request metrics."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from conveyor import Conveyor
from conveyor.metrics import PROMETHEUS_CONTENT_TYPE

from ._envelope import error_response
from ._hub import hub_for
from .routes import ERROR_RESPONSES, CommandRoute

events_router = APIRouter(route_class=CommandRoute)


@events_router.websocket("/api/v1/events")
async def events(websocket: WebSocket) -> None:
    """Every lifecycle event as a JSON frame ``{"event","job_id","queue","timestamp","data"}``;
    ``?events=job.completed,job_failed`` and ``?queues=a,b`` filter."""
    await hub_for(websocket.app.state.conveyor).serve(websocket)


_PROMETHEUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    200: {
        "description": "Prometheus text exposition format 0.0.4",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}


@events_router.get(
    "/metrics", response_class=Response, responses=_PROMETHEUS_RESPONSES, summary="Prometheus metrics (public)"
)
@events_router.get(
    "/api/v1/metrics/prometheus", response_class=Response, responses=_PROMETHEUS_RESPONSES,
    summary="Prometheus metrics (public)",
)  # fmt: skip
async def metrics(request: Request) -> Response:
    return await prometheus_text(request.app.state.conveyor)


async def prometheus_text(app: Conveyor) -> Response:
    """The installed Prometheus registry as text, gauges refreshed first."""
    await app.metrics.refresh()
    body = app.metrics.render()
    if body is None:
        return error_response(
            "NOT_FOUND",
            "no Prometheus registry is installed: the metrics plugin is disabled or the host "
            "installed its own recorder (install_external_recorder)",
            404,
        )
    return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)


class RequestMetricsMiddleware:
    """Counts requests and times them by method, route template (not the raw path, so ids do
    not explode the label space) and status."""

    def __init__(self, app: ASGIApp, conveyor: Conveyor) -> None:
        self.app, self.metrics = app, conveyor.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.metrics.installed:
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.inc("http_requests_total", method, template, str(status))
            self.metrics.observe("http_request_duration_seconds", time.perf_counter() - started, method, template)


_DASHBOARD = resources.files(__package__).joinpath("dashboard.html")


@events_router.get("/dashboard", include_in_schema=False)
async def dashboard(request: Request) -> Response:
    """A page of queue counts (polled) and live events (WebSocket) for operators. Public: it
    holds no data; its API calls carry the token typed into it."""
    return HTMLResponse(_DASHBOARD.read_text(encoding="utf-8"))
