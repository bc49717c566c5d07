"""The in-process workflow runtime: stage order, fan-out output order, joins, errors."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from conveyor.workflows import FunctionStep, Workflow, WorkflowStep, WorkflowStepError

pytestmark = pytest.mark.anyio


class Delayed:
    """A step on another engine that finishes after ``delay`` seconds."""

    def __init__(self, name: str, delay: float, finished: list[str]) -> None:
        self.name, self.delay, self.finished, self.engine_id = name, delay, finished, "remote"

    async def execute(self, input: Any) -> Any:
        await anyio.sleep(self.delay)
        self.finished.append(self.name)
        return f"{self.name}({input})"


async def test_each_stage_gets_the_previous_output() -> None:
    flow = Workflow().then(lambda x: x + 1).then(FunctionStep(lambda x: x * 10, name="times10"))

    async def halve(x: int) -> float:
        return x / 2

    assert await flow.then(halve).run(1) == 10.0
    assert flow.stages == 3


async def test_fan_out_keeps_step_order_not_finish_order() -> None:
    finished: list[str] = []
    slow, fast = Delayed("slow", 0.05, finished), Delayed("fast", 0.0, finished)
    assert isinstance(slow, WorkflowStep)
    flow = (
        Workflow()
        .then(str.upper)
        .fan_out([slow, fast])
        .fan_out_with_join([len, str], join=lambda xs: " | ".join(map(str, xs)))
    )
    assert await flow.run("a") == "2 | ['slow(A)', 'fast(A)']"
    assert finished == ["fast", "slow"]  # they ran concurrently; the output kept the given order


async def test_fan_out_without_join_collects_a_list() -> None:
    assert await Workflow().fan_out_with_join([abs, lambda x: -x]).run(-3) == [3, 3]


async def test_a_failing_step_is_named_and_stops_the_workflow() -> None:
    ran: list[str] = []

    def boom(x: Any) -> Any:
        raise KeyError("missing")

    flow = Workflow().then(lambda x: ran.append("first") or x).fan_out([abs, FunctionStep(boom, name="boom")])
    with pytest.raises(WorkflowStepError) as err:
        await flow.then(lambda x: ran.append("never")).run(1)
    assert err.value.stage == 1 and err.value.step == "boom" and "KeyError" in err.value.message
    assert isinstance(err.value.__cause__, KeyError) and ran == ["first"]
    with pytest.raises(ValueError):
        Workflow().fan_out([])
    with pytest.raises(TypeError):
        Workflow().then(42)  # type: ignore[arg-type]


async def test_sync_steps_of_a_fan_out_run_at_once_off_the_event_loop() -> None:
    """Each waits for the other at a barrier: run one after another (or on the loop's thread),
    the first would wait alone and the barrier would break."""
    barrier = threading.Barrier(2, timeout=30)

    def meet(n: int) -> int:
        barrier.wait()
        return n + 1

    def meet_too(n: int) -> int:
        barrier.wait()
        return n + 2

    assert await Workflow().fan_out([meet, meet_too]).run(1) == [2, 3]
