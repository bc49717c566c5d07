"""An installable third-party engine: the shape every Conveyor engine plugin has.

The entry point names `engine`, which Conveyor calls once with the app; the object it returns
runs every job routed to "echo" (concurrently, so keep it free of per-job state).
"""

from __future__ import annotations

from typing import Any


class EchoEngine:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def process(self, job: Any) -> Any:
        return {"echo": job.data, "engine": "echo", "queue": job.queue}


def engine(app: Any) -> EchoEngine:
    return EchoEngine(app)
