"""The Python task API: ``@app.task(queue=...)`` registers a handler, ``await handler.defer(...)``
pushes a job for it, and ``conveyor worker`` runs it (through the built-in ``python`` engine).

::

    app = conveyor.connect("sqlite:///jobs.db")

    @app.task(queue="emails", max_attempts=5)
    async def send_welcome(to: str) -> dict:
        ...
        return {"sent": True}

    await send_welcome.defer(to="ada@example.com")

A job's ``data`` is the keyword arguments of ``defer``; the handler's return value is the job's
result. Handlers may be sync (run in a worker thread) or async. With ``pass_context=True`` the
handler's first argument is a `JobContext` for progress, heartbeats and log lines.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar
from uuid import UUID

import anyio.to_thread

from ._limits import check_queue_name
from .errors import ValidationError
from .models import Job

P = ParamSpec("P")
R = TypeVar("R")


@dataclass
class JobContext:
    """What a running handler can reach: its job, and progress, heartbeats and log lines that
    go to the job (``worker_id`` guards them: a job reclaimed from this worker refuses them)."""

    job: Job
    app: Any
    worker_id: str | None = None
    _progress: float = field(default=0)

    async def progress(self, percent: float, message: str | None = None) -> None:
        self._progress = percent
        await self.app.progress(self.job.id, percent, message, worker_id=self.worker_id)

    async def log(self, message: str) -> None:
        """Append a line to the job's logs (progress unchanged)."""
        await self.app.progress(self.job.id, self._progress, message, worker_id=self.worker_id)

    async def heartbeat(self) -> None:
        await self.app.heartbeat(self.job.id, worker_id=self.worker_id)


IN_THREADS: set[UUID] = set()
"""Jobs whose sync handler's thread is still running, cancelled or not: a worker must not
release such a job (another worker would run it while this thread still does)."""


class Task(Generic[P, R]):
    """A registered handler. Calling it runs the function directly; `defer` queues a job."""

    def __init__(
        self, host: Any, fn: Callable[..., Any], queue: str, name: str, pass_context: bool, options: dict[str, Any]
    ) -> None:
        self.host, self.fn, self.queue, self.name = host, fn, queue, name
        self.pass_context, self.options = pass_context, options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def configure(self, **options: Any) -> Task[P, R]:
        """The same task with job options changed for the next `defer`: ``.configure(priority=9)``."""
        return Task(self.host, self.fn, self.queue, self.name, self.pass_context, {**self.options, **options})

    async def defer(self, **kwargs: Any) -> UUID:
        """Push a job running this task with ``kwargs``; returns the job id."""
        job_id: UUID = await self.host.push(self.queue, self.name, kwargs, **self.options)
        return job_id

    async def run(self, job: Job, context: JobContext) -> Any:
        """Run for ``job``: keyword arguments from an object ``data``, none for null, else the
        data as the one argument. Sync functions run in a worker thread."""
        args: tuple[Any, ...] = (context,) if self.pass_context else ()
        kwargs: dict[str, Any] = {}
        if isinstance(job.data, dict):
            kwargs = job.data
        elif job.data is not None:
            args += (job.data,)
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(*args, **kwargs)

        def in_thread() -> Any:
            IN_THREADS.add(job.id)  # marked by the thread itself: one cancelled before it ran is not
            try:
                return self.fn(*args, **kwargs)
            finally:
                IN_THREADS.discard(job.id)

        result = await anyio.to_thread.run_sync(
            in_thread, abandon_on_cancel=True
        )  # a timed-out sync handler cannot be interrupted: its thread is left to finish
        return await result if inspect.isawaitable(result) else result


class TaskRegistry:
    """Tasks by name; a name is unique per app."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> None:
        if task.name in self._tasks and self._tasks[task.name].fn is not task.fn:
            raise ValidationError(f"a task named {task.name!r} is already registered", field="name")
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    @property
    def queues(self) -> list[str]:
        return sorted({task.queue for task in self._tasks.values()})

    def __iter__(self) -> Iterator[Task[Any, Any]]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)


class TaskHost:
    """Mixin for `Conveyor` and `Client`: ``@app.task(...)`` and ``app.tasks``."""

    @property
    def tasks(self) -> TaskRegistry:
        registry: TaskRegistry | None = self.__dict__.get("_task_registry")
        if registry is None:
            registry = self.__dict__["_task_registry"] = TaskRegistry()
        return registry

    def use_tasks(self, registry: TaskRegistry) -> None:
        """Run ``registry``'s tasks here (a worker whose tasks were declared on another app)."""
        self.__dict__["_task_registry"] = registry

    def task(
        self,
        fn: Callable[P, R] | None = None,
        *,
        queue: str = "default",
        name: str | None = None,
        pass_context: bool = False,
        **options: Any,
    ) -> Any:
        """Register ``fn`` as a task on ``queue`` (named ``module.function`` unless ``name``);
        ``options`` are job options for every `defer` (``priority``, ``max_attempts``, ...).
        Use bare (``@app.task``) or with arguments (``@app.task(queue="q")``)."""
        check_queue_name(queue)

        def register(f: Callable[P, R]) -> Task[P, R]:
            if not callable(f):
                raise ValidationError(f"a task must be a function, got {f!r}", field="fn")
            task_name = name or f"{_module_name(f)}.{f.__qualname__}"
            task: Task[P, R] = Task(self, f, queue, task_name, pass_context, options)
            self.tasks.register(task)
            return task

        return register(fn) if fn is not None else register


def _module_name(fn: Callable[..., Any]) -> str:
    """The importable module name, also for a script run directly (``__main__``), so a task
    deferred by ``python myapp.py`` has the name ``conveyor worker myapp:app`` registers."""
    if fn.__module__ != "__main__":
        return fn.__module__
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    return Path(getattr(main, "__file__", "__main__")).stem
