"""Workflow layer: the in-process workflow runtime, built on the kernel's public API only.

Declarative workflow files (DESIGN.md §6: steps with ``needs``, submitted as one flow) are not
built yet; `Conveyor.submit_flow` takes the same steps as a dict meanwhile.
"""

from .runtime import FunctionStep, Workflow, WorkflowStep, WorkflowStepError

__all__ = ["FunctionStep", "Workflow", "WorkflowStep", "WorkflowStepError"]
