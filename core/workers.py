"""`WorkerRegistry`: engine factories by id, and how a job is routed to one.

Routing precedence (spec): ``metadata.engine`` (case-insensitive) first, then the queue's
mapped engine. No route is a `ValidationError` and the job stays active, so an operator can
see it and a later dispatch (or the stall sweep) deals with it.
"""

from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any

from ._limits import check_queue_name
from .errors import PluginError, ValidationError
from .interfaces import EngineFactory, Worker
from .models import Job

if TYPE_CHECKING:
    from .app import Conveyor

_ENGINE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class WorkerRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, EngineFactory] = {}
        self._origins: dict[str, str] = {}
        self._routes: dict[str, str] = {}
        self.entry_points_loaded = False

    @staticmethod
    def _normalize(engine_id: Any) -> str:
        if not isinstance(engine_id, str) or not _ENGINE_ID.fullmatch(engine_id.lower()):
            raise PluginError(
                f"engine id {engine_id!r} is invalid: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
            )
        return engine_id.lower()

    def register_engine_factory(self, engine_id: str, factory: EngineFactory, *, origin: str = "") -> None:
        """Register ``factory`` (a callable returning a `Worker`) under ``engine_id``.

        ``origin`` names where it came from (a package) for error messages. Raises `PluginError`
        on a malformed id, a non-callable factory or an id that is already taken.
        """
        key = self._normalize(engine_id)
        if not callable(factory):
            raise PluginError(f"engine {key!r}{_from(origin)}: factory {factory!r} is not callable")
        if key in self._factories:
            raise PluginError(f"engine {key!r}{_from(origin)} is already registered{_from(self._origins[key])}")
        self._factories[key] = factory
        self._origins[key] = origin

    def route_queue_to_engine(self, queue: str, engine_id: str) -> None:
        """Send jobs of ``queue`` without ``metadata.engine`` to ``engine_id``."""
        check_queue_name(queue)
        self._routes[queue] = self._normalize(engine_id)

    def routed(self, queue: str) -> str | None:
        """The engine ``queue`` is mapped to, if any."""
        return self._routes.get(queue)

    @property
    def engines(self) -> list[str]:
        return sorted(self._factories)

    def engine_for(self, job: Job) -> str:
        """The engine id that should run ``job``; `ValidationError` when none matches."""
        meta = job.metadata if isinstance(job.metadata, dict) else {}
        wanted = meta.get("engine")
        if wanted is not None:
            if not isinstance(wanted, str) or wanted.lower() not in self._factories:
                raise ValidationError(
                    f"job {job.id}: metadata.engine {wanted!r} is not a registered engine "
                    f"(registered: {', '.join(self.engines) or 'none'})",
                    field="metadata.engine",
                )
            return wanted.lower()
        routed = self._routes.get(job.queue)
        if routed is None or routed not in self._factories:
            raise ValidationError(
                f"job {job.id}: no engine for queue {job.queue!r} and no metadata.engine",
                field="metadata.engine",
            )
        return routed

    async def create_worker(self, engine_id: str) -> Worker:
        worker = self._factories[engine_id]()
        if inspect.isawaitable(worker):
            worker = await worker
        return worker

    async def dispatch_next_with_registered_worker(self, app: Conveyor, queue: str) -> Job | None:
        """Pull one job from ``queue``, run it on its engine, ack with the result or fail with
        the exception text. Returns the job as it was pulled, or None when the queue is empty.
        Raises `ValidationError` if no engine matches (the job stays active)."""
        pulled = await app.pull(queue, 1)
        if not pulled:
            return None
        job = pulled[0]
        worker = await self.create_worker(self.engine_for(job))
        try:
            result = await worker.process(job)
        except Exception as exc:  # noqa: BLE001 - a job's failure is data, not a crash
            await app.fail(job.id, f"{type(exc).__name__}: {exc}"[:10_000])
        else:
            await app.ack(job.id, result)
        return job


def _from(origin: str) -> str:
    return f" (from {origin})" if origin else ""
