"""Built-in ``http`` plugin: the RustQueue-compatible REST API (FastAPI, served by uvicorn).

It uses the public protocols hook like any third-party plugin; block it with
``disable_plugins=["http"]``. ``conveyor.plugins.http.api.build_api(app)`` gives the ASGI
application alone, to mount in another app or to test in process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.hookspecs import hookimpl

if TYPE_CHECKING:
    from conveyor import Conveyor

    from ._hub import EventHub
    from .server import HttpServer


@hookimpl
def conveyor_protocols(app: Conveyor) -> HttpServer:
    from .server import HttpServer  # FastAPI and uvicorn load only in server mode

    return HttpServer(app)


@hookimpl
def conveyor_event_sinks(app: Conveyor) -> EventHub:
    """The WebSocket clients of ``GET /api/v1/events`` (idle until a server has clients)."""
    from ._hub import hub_for

    return hub_for(app)
