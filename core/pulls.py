"""`PullStop`: how a protocol server ends the wait of a long-poll ``pull`` whose client has left.

Cancelling the pull ends the wait too, but also a claim under way, whose jobs the storage then
gives back: a client that half-closes after sending (``printf ... | nc``) would be told "no
job" while one waited. A stop only ends the *wait*: the claim a pull makes first, or one under
way, completes and is answered, and no claim is made after it.
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
        self.waiting: anyio.CancelScope | None = None
        """The wait under way, which `stop` ends (`Conveyor`'s pull sets and clears it)."""

    def stop(self) -> None:
        self.stopped = True
        if self.waiting is not None:
            self.waiting.cancel()

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
