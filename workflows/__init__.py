"""Workflow layer: the in-process workflow runtime and declarative workflow definitions.

Built on the kernel's public API only (see DESIGN.md §6).
"""

from .runtime import FunctionStep, Workflow, WorkflowStep, WorkflowStepError

__all__ = ["FunctionStep", "Workflow", "WorkflowStep", "WorkflowStepError"]
