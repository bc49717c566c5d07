"""Workflow layer: the in-process workflow runtime and declarative workflow definitions.

Built on the kernel's public API only (see DESIGN.md §6).
"""
