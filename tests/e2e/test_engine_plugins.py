"""Engines from the ``conveyor.engines`` entry-point group: the example third-party package,
installed into this environment, is found and runs jobs; a broken or duplicate engine stops
the app with an error naming the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "conveyor-echo-engine"

DISPATCH = """
import anyio
from conveyor import Conveyor

async def main():
    async with Conveyor("sqlite:///:memory:", maintenance=False) as app:
        print("engines:", app.workers.engines)
        job_id = await app.push("anything", "say", {"hello": "world"}, metadata={"engine": "ECHO"})
        await app.workers.dispatch_next_with_registered_worker(app, "anything")
        print("result:", (await app.get(job_id)).result)

anyio.run(main)
"""


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})  # fmt: skip


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_an_installed_engine_package_is_found_and_runs_jobs() -> None:
    before = python(DISPATCH)
    assert "'ECHO' is not a registered engine (registered: python)" in before.stderr  # not installed yet
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    try:
        after = python(DISPATCH)
        assert after.returncode == 0, after.stderr
        assert "engines: ['echo', 'python']" in after.stdout
        assert "result: {'echo': {'hello': 'world'}, 'engine': 'echo', 'queue': 'anything'}" in after.stdout
    finally:
        pip("uninstall", "--quiet", "--yes", "conveyor-echo-engine")


def fake_distribution(root: Path, name: str, entry_points: str) -> str:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[conveyor.engines]\n{entry_points}\n")
    return str(root)


OPEN = "import anyio\nfrom conveyor import Conveyor\nanyio.run(Conveyor('sqlite:///:memory:', maintenance=False).open)"


def test_a_broken_engine_names_its_package(tmp_path: Path) -> None:
    path = fake_distribution(tmp_path, "broken_engines", "gpu = no_such_module:engine")
    result = python(OPEN, PYTHONPATH=path)
    assert result.returncode != 0
    assert "engine 'gpu' from package 'broken_engines' failed to load: ModuleNotFoundError" in result.stderr


def test_a_duplicate_engine_names_both_packages(tmp_path: Path) -> None:
    path = fake_distribution(tmp_path, "impostor", "python = impostor_engine:engine")
    (tmp_path / "impostor_engine.py").write_text(
        "class E:\n    async def process(self, job): ...\ndef engine(app):\n    return E()\n"
    )
    result = python(OPEN, PYTHONPATH=path)
    assert result.returncode != 0
    assert "'python'" in result.stderr and "already registered" in result.stderr
    assert "impostor" in result.stderr and "'conveyor'" in result.stderr
