"""What a newcomer does first: the README's examples and `make run` work as pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_readme_quick_start_runs_as_pasted(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) == 5
    workers = blocks.pop(2)
    first = run(blocks[0], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "completed" and "completed=1" in first.stdout
    second = run(blocks[1], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "'emails'" in second.stdout and "'reports'" in second.stdout
    assert (tmp_path / "jobs.db").exists()
    third = run(blocks[2], tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() == "3 blocked, 1 waiting"
    fourth = run(blocks[3], tmp_path)
    assert fourth.returncode == 0, fourth.stderr
    assert fourth.stdout.strip().endswith(("T01:30:00+00:00", "T00:30:00+00:00")), fourth.stdout  # winter, summer
    (tmp_path / "myapp.py").write_text(workers)
    deferred = subprocess.run([sys.executable, "myapp.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert deferred.returncode == 0, deferred.stderr
    job_id = deferred.stdout.strip()
    worker = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "myapp:app"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        check = (
            "import conveyor\nwith conveyor.connect_sync('sqlite:///jobs.db', maintenance=False) as q:\n"
            f"    print(q.get('{job_id}').state)"
        )
        for _ in range(100):  # the worker runs the deferred job
            if (state := run(check, tmp_path).stdout.strip()) == "completed":
                break
        assert state == "completed"
    finally:
        worker.terminate()
        assert worker.wait(60) == 0


def test_the_run_example_uses_the_sqlite_default(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "'completed': 2" in result.stdout and "mailbox does not exist" in result.stdout
    assert (tmp_path / "conveyor.db").exists()


def test_cli_db_upgrade_and_bad_storage(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "conveyor", "--storage", f"sqlite:///{tmp_path}/x.db", "db", "upgrade"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0 and "schema up to date" in ok.stdout, ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "conveyor", "queues", "--url", "nope://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no storage plugin handles 'nope'" in bad.stderr
