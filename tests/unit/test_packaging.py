"""The wheel contains every sub-package of core/, plugins/ and workflows/ (DESIGN.md §1)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = {"core": "conveyor", "plugins": "conveyor/plugins", "workflows": "conveyor/workflows"}


def expected_packages() -> set[str]:
    found = set()
    for folder, package in PACKAGE_ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add("/".join(p for p in (package, *relative.parts) if p))
    return found


@pytest.mark.slow
def test_wheel_contains_every_sub_package(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    [wheel] = tmp_path.glob("conveyor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(p for p in expected_packages() if f"{p}/__init__.py" not in names)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert {"conveyor/plugins/sql/primitives.py", "conveyor/hookspecs.py", "conveyor/workflows/__init__.py"} <= names
    assert "conveyor/plugins/http/dashboard.html" in names  # package data, read at run time
    assert len(expected_packages()) >= 4
