"""An event sink plugin: appends every lifecycle event to a JSON-lines file.

The file is ``$CONVEYOR_JSONL_SINK_PATH`` (default ``./conveyor-events.jsonl``). Writes go
through a worker thread so a slow disk never blocks the event loop; the kernel already runs
each sink from its own task with a bounded buffer, so a slow sink never slows the queue.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import anyio.to_thread

from conveyor import hookimpl

if TYPE_CHECKING:
    from conveyor import Conveyor, Event

PATH_VARIABLE = "CONVEYOR_JSONL_SINK_PATH"


class JsonLinesSink:
    name = "jsonl"
    scope = "node"  # this process's events; "cluster" would log every node's events on each node

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    async def handle(self, event: Event) -> None:
        line = json.dumps(event.to_wire(), separators=(",", ":")) + "\n"
        await anyio.to_thread.run_sync(self._write, line)

    def _write(self, line: str) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(line)
        self._file.flush()

    async def run(self) -> None:
        """Close the file when the app closes (the kernel cancels ``run`` after draining)."""
        try:
            await anyio.sleep_forever()
        finally:
            if self._file is not None:
                self._file.close()


@hookimpl
def conveyor_event_sinks(app: Conveyor) -> JsonLinesSink:
    return JsonLinesSink(Path(os.environ.get(PATH_VARIABLE, "conveyor-events.jsonl")))
