"""Worker engines from the ``conveyor.engines`` entry-point group (stevedore), and the two
built in: ``python`` (runs `@app.task` handlers) and ``shell`` (runs a command; off unless
``shell_engine`` is set, since it executes what a job says).

An entry point names a callable ``engine(app) -> Worker | None``; it is called once when the
app's engines load, and the `Worker` it returns runs every job routed to that engine id
(concurrently). Returning None leaves the engine off. Built-in engines are declared in this
distribution's own entry points, so they are found exactly like third-party ones.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import shlex
from collections.abc import Callable
from typing import Any

import anyio
from stevedore import ExtensionManager

from .config import Settings
from .errors import PluginError
from .models import Job
from .tasks import JobContext
from .workers import WorkerRegistry

NAMESPACE = "conveyor.engines"
MAX_OUTPUT_BYTES = 64 * 1024


def load_engines(app: Any, registry: WorkerRegistry, *, blocked: frozenset[str] = frozenset()) -> list[str]:
    """Register every installed engine with ``registry``; returns the ids registered. A broken
    entry point or a duplicate id raises `PluginError` naming the package(s); an id listed in
    ``blocked`` (the app's ``disable_plugins``) is not loaded."""

    def failed(manager: Any, entry_point: Any, exc: BaseException) -> None:
        raise PluginError(
            f"engine {entry_point.name!r}{_package(entry_point)} failed to load: {type(exc).__name__}: {exc}"
        ) from exc

    if registry.entry_points_loaded:  # a reopened app keeps its engines
        return []
    manager = ExtensionManager(NAMESPACE, invoke_on_load=False, on_load_failure_callback=failed)
    loaded = []
    for extension in manager:
        if extension.name in blocked:
            continue
        origin = _package(extension.entry_point).removeprefix(" from ")
        try:
            worker = extension.plugin(app)
        except Exception as exc:
            raise PluginError(
                f"engine {extension.name!r} (from {origin}) failed to start: {type(exc).__name__}: {exc}"
            ) from exc
        if worker is None:
            continue
        if not callable(getattr(worker, "process", None)):
            raise PluginError(
                f"engine {extension.name!r} (from {origin}) returned {worker!r}, which has no process(job)"
            )
        registry.register_engine_factory(extension.name, _always(worker), origin=origin)
        loaded.append(extension.name.lower())
    registry.entry_points_loaded = True
    return loaded


def _always(worker: Any) -> Callable[[], Any]:
    return lambda: worker


def _package(entry_point: Any) -> str:
    """`` from package 'name'`` for an entry point (stevedore's cached ones carry no dist)."""
    name = _packages().get((entry_point.name, entry_point.value))
    return f" from package {name!r}" if name else ""


@functools.cache
def _packages() -> dict[tuple[str, str], str]:
    """Which distribution declares each engine entry point: one scan per process, not one per
    engine per app opened."""
    return {
        (ep.name, ep.value): ep.dist.metadata["name"]
        for ep in importlib.metadata.entry_points(group=NAMESPACE)
        if ep.dist is not None
    }


class PythonEngine:
    """Runs the app's `@app.task` handler named like the job."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def process(self, job: Job) -> Any:
        task = self.app.tasks.get(job.name)
        if task is None:
            known = ", ".join(sorted(t.name for t in self.app.tasks)) or "none"
            raise LookupError(f"no task named {job.name!r} in this worker (registered: {known})")
        return await task.run(job, JobContext(job, self.app, job.worker_id))


class ShellEngine:
    """Runs ``data.command`` (a list of arguments, or a string split like a shell would, never
    through a shell) with optional ``cwd`` and ``env``; the result is ``{exit_code, stdout,
    stderr}`` (each output cut to 64 KB). A non-zero exit fails the job. ``timeout_ms`` is the
    job's own, enforced by the worker."""

    async def process(self, job: Job) -> Any:
        data = job.data if isinstance(job.data, dict) else {}
        command = data.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise ValueError('shell job data needs "command": a string or a list of strings')
        env = data.get("env")
        if env is not None and not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise ValueError('"env" must map names to strings')
        done = await anyio.run_process(command, cwd=data.get("cwd"), env=env, check=False)
        result = {
            "exit_code": done.returncode,
            "stdout": done.stdout[:MAX_OUTPUT_BYTES].decode(errors="replace"),
            "stderr": done.stderr[:MAX_OUTPUT_BYTES].decode(errors="replace"),
        }
        if done.returncode != 0:
            raise RuntimeError(f"command exited with {done.returncode}: {json.dumps(result)[:2000]}")
        return result


def python_engine(app: Any) -> PythonEngine:
    return PythonEngine(app)


def shell_engine(app: Any) -> ShellEngine | None:
    settings = getattr(app, "settings", None) or Settings()  # a client: CONVEYOR_SHELL_ENGINE
    return ShellEngine() if settings.shell_engine else None
