"""The in-process workflow runtime (the spec's library API): steps run in stages, each stage's
output is the next stage's input.

::

    flow = Workflow().then(fetch).fan_out([resize, thumbnail]).then(publish)
    result = await flow.run({"url": "..."})

A stage is one step (``then``), several steps on the same input at once (``fan_out``: their
outputs, in the order the steps were given, become a list), or that plus a join step
(``fan_out_with_join``: the join receives the list; without one, the list is the output).
A failing step stops the workflow with `WorkflowStepError` naming the stage and step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from conveyor.errors import ConveyorError


@runtime_checkable
class WorkflowStep(Protocol):
    """One unit of work for an engine: ``engine_id`` names who runs it (for routing and error
    messages); ``execute`` turns the stage input into its output."""

    engine_id: str

    async def execute(self, input: Any) -> Any: ...


class FunctionStep:
    """A `WorkflowStep` from a plain function, sync or async: ``FunctionStep(resize)``. A sync
    function runs in a worker thread, as sync task handlers do: it neither blocks the event
    loop (heartbeats, other jobs) nor serializes the steps of a ``fan_out``."""

    def __init__(self, fn: Callable[[Any], Any], engine_id: str = "python", name: str | None = None) -> None:
        self.fn, self.engine_id = fn, engine_id
        self.name = name or getattr(fn, "__name__", repr(fn))

    async def execute(self, input: Any) -> Any:
        if inspect.iscoroutinefunction(self.fn):
            return await self.fn(input)
        result = await anyio.to_thread.run_sync(self.fn, input)
        return await result if inspect.isawaitable(result) else result

    def __repr__(self) -> str:
        return f"FunctionStep({self.name}, engine={self.engine_id!r})"


StepLike = WorkflowStep | Callable[[Any], Any]


class WorkflowStepError(ConveyorError):
    """A step failed; ``stage`` (0-based) and ``step`` say which, ``__cause__`` says why."""

    def __init__(self, stage: int, step: str, cause: BaseException) -> None:
        super().__init__(
            f"workflow stage {stage}, step {step}: {type(cause).__name__}: {cause}",
            details={"stage": stage, "step": step},
        )
        self.stage, self.step = stage, step


def _step(item: StepLike) -> WorkflowStep:
    if isinstance(item, WorkflowStep):
        return item
    if callable(item):
        return FunctionStep(item)
    raise TypeError(f"{item!r} is neither a WorkflowStep nor a callable")


def _name(step: WorkflowStep) -> str:
    return str(getattr(step, "name", None) or f"{type(step).__name__}[{step.engine_id}]")


@dataclass(frozen=True)
class _Stage:
    steps: tuple[WorkflowStep, ...]
    parallel: bool
    join: WorkflowStep | None = None


class Workflow:
    """Stages run in order; build with `then`, `fan_out`, `fan_out_with_join`, run with `run`.
    Each builder returns the same workflow, so calls chain."""

    def __init__(self) -> None:
        self._stages: list[_Stage] = []

    def then(self, step: StepLike) -> Workflow:
        self._stages.append(_Stage((_step(step),), parallel=False))
        return self

    def fan_out(self, steps: Sequence[StepLike]) -> Workflow:
        """Run ``steps`` concurrently on the same input; the output is their outputs as a list,
        in the order of ``steps`` (not of completion)."""
        return self.fan_out_with_join(steps, None)

    def fan_out_with_join(self, steps: Sequence[StepLike], join: StepLike | None = None) -> Workflow:
        """`fan_out`, then ``join`` receives the list of outputs and its output is the stage's."""
        if not steps:
            raise ValueError("fan_out needs at least one step")
        self._stages.append(_Stage(tuple(_step(s) for s in steps), True, _step(join) if join is not None else None))
        return self

    @property
    def stages(self) -> int:
        return len(self._stages)

    async def run(self, input: Any = None) -> Any:
        value = input
        for index, stage in enumerate(self._stages):
            if stage.parallel:
                value = await self._fan_out(index, stage.steps, value)
                if stage.join is not None:
                    value = await _run(index, stage.join, value)
            else:
                value = await _run(index, stage.steps[0], value)
        return value

    @staticmethod
    async def _fan_out(index: int, steps: tuple[WorkflowStep, ...], value: Any) -> list[Any]:
        outputs: list[Any] = [None] * len(steps)
        failures: list[WorkflowStepError] = []

        async def one(position: int, step: WorkflowStep) -> None:
            try:
                outputs[position] = await _run(index, step, value)
            except WorkflowStepError as exc:
                failures.append(exc)
                tg.cancel_scope.cancel()  # the stage has failed: the others' work is moot

        async with anyio.create_task_group() as tg:
            for position, step in enumerate(steps):
                tg.start_soon(one, position, step)
        if failures:
            raise failures[0]
        return outputs


async def _run(index: int, step: WorkflowStep, value: Any) -> Any:
    try:
        return await step.execute(value)
    except WorkflowStepError:
        raise
    except Exception as exc:
        raise WorkflowStepError(index, _name(step), exc) from exc
