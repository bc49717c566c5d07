"""`SyncConveyor`: the embedded API for programs that are not async.

It runs a `Conveyor` on an event loop in a background thread (an anyio blocking portal) and
forwards each call, so the same method names block until done. The maintenance loop and event
sinks keep running on that thread between calls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from .app import Conveyor

API = (
    "push", "push_job", "push_batch", "pull", "ack", "ack_batch", "fail", "cancel", "progress", "heartbeat", "release",
    "get", "stats", "queues", "pause", "resume", "dlq", "flow", "submit_flow",
    "add_webhook", "webhooks", "get_webhook", "remove_webhook",
    "add_schedule", "schedules", "get_schedule", "remove_schedule", "pause_schedule", "resume_schedule",
)  # fmt: skip


class Blocking:
    """Runs an async queue object (`Conveyor` or a `conveyor.client.Client`) on an event loop
    in a background thread; its API methods block until done. Subclasses forward methods
    with `forward_api`."""

    def __init__(self, target: Any) -> None:
        self.app = target
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._app_cm: AbstractContextManager[Conveyor] | None = None
        self._portal: BlockingPortal | None = None

    def open(self) -> Self:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._app_cm = self._portal.wrap_async_context_manager(self.app)
        try:
            self._app_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = self._app_cm = None
            raise
        return self

    def close(self) -> None:
        if self._app_cm is None or self._portal_cm is None:
            return
        try:
            self._app_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal = self._portal_cm = self._app_cm = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run any coroutine function on the app's loop and wait for it."""
        if self._portal is None:
            raise RuntimeError(f"{type(self).__name__} is not open: use 'with {type(self).__name__}(...)' or open()")
        return self._portal.call(functools.partial(fn, *args, **kwargs))


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
