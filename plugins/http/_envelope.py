"""Every HTTP failure as the one envelope ``{"ok": false, "error": {code, message, details}}``:
kernel errors (bad input included: routes validate through the command layer, never through
FastAPI), unknown routes, oversize bodies and unexpected crashes."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.auth import TokenAuth
from conveyor.errors import ConveyorError, LimitExceededError, UnauthorizedError

log = logging.getLogger("conveyor.http")

_ROUTE_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


def error_response(
    code: str,
    message: str,
    status: int,
    details: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"ok": False, "error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def conveyor_error_response(exc: ConveyorError) -> JSONResponse:
    headers = None
    if isinstance(exc, UnauthorizedError):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, LimitExceededError) and exc.field == "body":
        headers = {"Connection": "close"}  # the rest of the body may be left unread
    return error_response(exc.code, exc.message, exc.http_status, exc.details, headers)


async def _on_conveyor_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConveyorError)
    return conveyor_error_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _ROUTE_CODES.get(exc.status_code, "VALIDATION_ERROR" if exc.status_code < 500 else "INTERNAL_ERROR")
    message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    if exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(code, message, exc.status_code, headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("INTERNAL_ERROR", f"internal error: {type(exc).__name__}", 500)


def install_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(ConveyorError, _on_conveyor_error)
    api.add_exception_handler(StarletteHTTPException, _on_http_exception)
    api.add_exception_handler(Exception, _on_unexpected)


class BearerAuthMiddleware:
    """Refuses every request but those to ``public`` paths unless it carries an accepted
    ``Authorization: Bearer <token>`` (the kernel's `TokenAuth`, shared with TCP). Browsers
    cannot set headers on a WebSocket, so a WebSocket may give ``?token=`` instead."""

    def __init__(self, app: ASGIApp, auth: TokenAuth, public: frozenset[str]) -> None:
        self.app, self.auth, self.public = app, auth, public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in self.public:
            header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            try:
                if header is None and scope["type"] == "websocket" and (token := _query_token(scope)) is not None:
                    self.auth.check(token)
                else:
                    self.auth.check_header(header.decode("latin-1") if header is not None else None)
            except UnauthorizedError as exc:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": exc.message})
                    return
                await conveyor_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None
