"""A real local HTTP server that receives webhooks, for the tests.

It records every request (headers and raw body) and answers with the next status of a
script (then ``default``). ``hold()`` makes it accept requests and not answer until
``release()``: a receiver that is up but dead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    def __init__(self, statuses: list[int] | None = None, default: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.default = default
        self.received: list[Received] = []
        self.held = 0
        self.trickle_s = 0.0
        """When set: answer 200 with a 20-byte body sent one byte per this many seconds."""
        self._lock = threading.Condition()
        self._open = threading.Event()
        self._open.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                    receiver.held += 0 if receiver._open.is_set() else 1
                    receiver._lock.notify_all()
                receiver._open.wait()
                self.send_response(status)
                if receiver.trickle_s:
                    self.send_header("Content-Length", "20")
                    self.end_headers()
                    try:
                        for _ in range(20):
                            self.wfile.write(b".")
                            self.wfile.flush()
                            time.sleep(receiver.trickle_s)
                    except OSError:
                        pass  # the sender gave up
                    return
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> list[Received]:
        """Wait until ``predicate(received)`` holds; fail with what arrived if it never does."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver never saw what was expected; got {self.events()}")
                self._lock.wait(left)
            return list(self.received)

    async def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 30) -> list[Received]:
        """`wait_for` from async code, leaving the event loop free to deliver."""
        import anyio.to_thread

        return await anyio.to_thread.run_sync(self.wait_for, predicate, timeout)

    def events(self) -> list[tuple[str, str]]:
        """(event, job_id) of every request, in arrival order."""
        return [(r.json["event"], r.json["data"]["job_id"]) for r in self.received]


@contextmanager
def receiving(statuses: list[int] | None = None, default: int = 200) -> Iterator[Receiver]:
    with Receiver(statuses, default) as receiver:
        yield receiver
