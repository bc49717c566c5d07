"""`PullStop`: how a protocol server ends the wait of a long-poll ``pull`` whose client has left.

Cancelling the pull would do that too, but a cancellation can land while a claim is being
committed, and the jobs it claimed would then sit ``active`` for nobody until the stall
timeout. A stop only ends the *wait*: a claim under way completes and its jobs are answered
(a client that half-closes after sending still gets them), and no claim is made after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import anyio

_CURRENT: ContextVar[PullStop | None] = ContextVar("conveyor_pull_stop", default=None)


class PullStop:
    """``with stop.applied(): await commands.execute(app, "pull", ...)``, then `stop` from
    another task when the client's stream ends."""

    def __init__(self) -> None:
        self.stopped = False
        self.waits: set[anyio.CancelScope] = set()
        """The waits under way that `stop` ends (`Conveyor`'s pull adds and removes them)."""

    def stop(self) -> None:
        self.stopped = True
        for scope in list(self.waits):
            scope.cancel()

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Pulls run in this block, and in tasks started from it, obey this stop."""
        token = _CURRENT.set(self)
        try:
            yield
        finally:
            _CURRENT.reset(token)


def current_stop() -> PullStop | None:
    return _CURRENT.get()
