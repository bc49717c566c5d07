"""`SyncConveyor`: the embedded API for programs that are not async.

It runs a `Conveyor` on an event loop in a background thread (an anyio blocking portal) and
forwards each call, so the same method names block until done. The maintenance loop and event
sinks keep running on that thread between calls.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from anyio.from_thread import start_blocking_portal

from .app import Conveyor

API = (
    "push", "push_job", "push_batch", "pull", "ack", "ack_batch", "fail", "cancel", "progress", "heartbeat", "release",
    "get", "stats", "queues", "pause", "resume", "dlq", "flow", "submit_flow",
    "add_webhook", "webhooks", "get_webhook", "remove_webhook",
    "add_schedule", "schedules", "get_schedule", "remove_schedule", "pause_schedule", "resume_schedule",
)  # fmt: skip


class _Running:
    """What an open `Blocking` holds: the portal (its loop thread) and the entered target.
    Kept apart from the `Blocking` so its finalizer can close it without keeping it alive."""

    def __init__(self, target: Any) -> None:
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._thread: threading.Thread | None = None
        self._target_cm = self.portal.wrap_async_context_manager(target)
        try:
            self.portal.call(self._note_thread)
            self._target_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    async def _note_thread(self) -> None:
        self._thread = threading.current_thread()

    def close(self) -> None:
        """Exit the target (storage drains as on ``async with``), then stop the loop thread."""
        if threading.current_thread() is self._thread:
            # collected on its own loop (a cycle): a portal cannot wait on itself
            threading.Thread(target=self.close, name="conveyor-close").start()
            return
        try:
            self._target_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)


class Blocking:
    """Runs an async queue object (`Conveyor` or a `conveyor.client.Client`) on an event loop
    in a background thread; its API methods block until done. Subclasses forward methods
    with `forward_api`.

    One left open is closed when it is garbage-collected, or at interpreter exit (before
    daemon threads stop, so its loop can still drain storage): otherwise the exiting
    interpreter would wait forever on the loop thread."""

    def __init__(self, target: Any) -> None:
        self.app = target
        self._running: _Running | None = None
        self._finalizer: weakref.finalize | None = None

    def open(self) -> Self:
        if self._running is None:
            self._running = running = _Running(self.app)
            self._finalizer = weakref.finalize(self, running.close)
        return self

    def close(self) -> None:
        finalizer, self._running, self._finalizer = self._finalizer, None, None
        if finalizer is not None:
            finalizer()  # runs `_Running.close` once: collection and exit then do nothing

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run any coroutine function on the app's loop and wait for it."""
        if self._running is None:
            raise RuntimeError(f"{type(self).__name__} is not open: use 'with {type(self).__name__}(...)' or open()")
        return self._running.portal.call(functools.partial(fn, *args, **kwargs))


def forward_api(cls: type[Blocking], target: type, names: tuple[str, ...] = API) -> None:
    """Give ``cls`` a blocking method for each async method ``names`` of ``target``."""
    for name in names:
        setattr(cls, name, _blocking(target, name))


def _blocking(target: type, name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(target, name))
    def method(self: Blocking, *args: Any, **kwargs: Any) -> Any:
        return self.call(getattr(self.app, name), *args, **kwargs)

    return method


class SyncConveyor(Blocking):
    """``with SyncConveyor("sqlite:///jobs.db") as app: app.push("q", "job")``.

    Takes the same arguments as `Conveyor`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(Conveyor(*args, **kwargs))


forward_api(SyncConveyor, Conveyor)
