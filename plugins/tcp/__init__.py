"""Built-in ``tcp`` plugin: RustQueue's line-delimited JSON protocol, the fast path for workers.

One JSON object per ``\\n``-terminated line in, one reply line out, pipelined requests answered
in order. Every command of `conveyor.commands` is available (``{"cmd": "push", ...}``), the same
layer the REST API runs. Block it with ``disable_plugins=["tcp"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.hookspecs import hookimpl

if TYPE_CHECKING:
    from conveyor import Conveyor

    from .server import TcpServer


@hookimpl
def conveyor_protocols(app: Conveyor) -> TcpServer:
    from .server import TcpServer

    return TcpServer(app)
