"""`build_api`: the FastAPI application for one `Conveyor`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.types import ASGIApp

from conveyor import Conveyor, __version__
from conveyor.auth import TokenAuth

from ._envelope import BearerAuthMiddleware, install_error_handlers
from .events import RequestMetricsMiddleware, events_router
from .routes import BODY_SCHEMAS, public_router, router

PUBLIC_PATHS = frozenset({
    "/health", "/api/v1/health", "/metrics", "/api/v1/metrics/prometheus",
    "/openapi.json", "/api/v1/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/dashboard",
})  # fmt: skip
"""Reachable without a token: probes, scrapers, the API description and the dashboard page
(which holds no data: its own API calls carry the token typed into it)."""


class _Api(FastAPI):
    """FastAPI for routing, documentation and exception handlers, on Starlette's middleware
    stack (error handler, our middleware, exception handlers, router). FastAPI adds telemetry,
    a body-limit and file-closing exit-stack layers for features these routes do not use (the
    body limit is ours, read before parsing); dropping them made single-op requests ~10%
    cheaper (tests/benchmarks/RESULTS.md)."""

    def build_middleware_stack(self) -> ASGIApp:
        return Starlette.build_middleware_stack(self)


def build_api(app: Conveyor) -> FastAPI:
    """The REST API over ``app``: routes, error envelope, auth (when tokens are configured)
    and OpenAPI at ``/openapi.json`` and ``/api/v1/openapi.json`` with docs UI at ``/docs``."""
    api = _Api(
        title="Conveyor",
        version=__version__,
        description="Job queue and workflow orchestration; RustQueue-compatible REST API. Every error is "
        '`{"ok": false, "error": {"code", "message", "details"}}`.',
    )
    api.state.conveyor = app
    api.state.max_request_bytes = app.settings.max_request_bytes
    api.router.routes.extend([*router.routes, *public_router.routes, *events_router.routes])  # flat, no nesting
    install_error_handlers(api)
    auth = TokenAuth(app.settings.auth_tokens)
    if auth.enabled:
        api.add_middleware(BearerAuthMiddleware, auth=auth, public=PUBLIC_PATHS)
    api.add_middleware(RequestMetricsMiddleware, conveyor=app)  # outermost: refusals are counted too
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the request-body schemas the routes declare themselves."""
    if api.openapi_schema is None:
        document = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        _, defs = models_json_schema(
            [(model, "validation") for model in BODY_SCHEMAS.values()], ref_template="#/components/schemas/{model}"
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for path in document["paths"].values():  # our errors are 400 envelopes, never FastAPI's 422
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        for name, schema in defs.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        api.openapi_schema = document
    return api.openapi_schema
