"""Meta-tests (as datasette has): every hookspec is documented in docs/plugins.md with its exact
signature, and has a test named ``test_hook_<hookspec>``. A new hook cannot land undocumented or
untested."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conveyor import hookspecs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "plugins.md").read_text()
HOOKS = sorted(name for name, obj in vars(hookspecs).items() if name.startswith("conveyor_") and callable(obj))


def test_there_are_four_hook_families() -> None:
    assert HOOKS == ["conveyor_engines", "conveyor_event_sinks", "conveyor_protocols", "conveyor_storage"]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    fn = getattr(hookspecs, hook)
    signature = f"def {hook}{inspect.signature(fn)}".replace("'", "")
    assert f"### {hook}\n" in GUIDE, f"docs/plugins.md has no section for {hook}"
    assert signature in GUIDE, f"docs/plugins.md does not show the signature: {signature}"
    assert fn.__doc__ and len(fn.__doc__.split()) > 30, f"{hook} needs a real docstring"


def _test_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    assert f"test_hook_{hook}" in _test_names(), f"add a test named test_hook_{hook}"


def test_hookspec_docstrings_state_their_contract() -> None:
    for hook in HOOKS:
        doc = " ".join((inspect.getdoc(getattr(hookspecs, hook)) or "").split())
        assert "Called" in doc, f"{hook}: say when it is called"
        assert "raise" in doc.lower(), f"{hook}: say whether it may raise"
        assert ("First result wins" in doc) or ("Every implementation is called" in doc), f"{hook}: firstresult or not"
