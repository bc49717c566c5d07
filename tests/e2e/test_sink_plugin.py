"""The example third-party event sink (examples/conveyor-jsonl-sink), installed into this
environment, is found through the ``conveyor`` entry-point group and writes every event; it is
blocked by its entry-point name like a built-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_engine_plugins import ROOT, pip, python

EXAMPLE = ROOT / "examples" / "conveyor-jsonl-sink"

SCRIPT = """
import anyio, sys
from conveyor import Conveyor

async def main():
    async with Conveyor("sqlite:///:memory:", maintenance=False, disable_plugins=sys.argv[1:]) as app:
        job_id = await app.push("emails", "send", {"to": "a@example.com"})
        [job] = await app.pull("emails")
        await app.progress(job.id, 50, "half way")
        await app.ack(job.id, {"sent": True})
        print(job_id)

anyio.run(main)
"""


@pytest.mark.slow
def test_the_example_sink_package_writes_every_event_as_a_json_line(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    try:
        done = python(SCRIPT, CONVEYOR_JSONL_SINK_PATH=str(log))
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(e["event"], e["job_id"], e["queue"]) for e in lines] == [
            ("job.pushed", job_id, "emails"),
            ("job.progress", job_id, "emails"),
            ("job.completed", job_id, "emails"),
        ]
        assert lines[1]["data"] == {"progress": 50, "message": "half way"}

        blocked = tmp_path / "blocked.jsonl"
        done = python(SCRIPT.replace("sys.argv[1:]", "['jsonl']"), CONVEYOR_JSONL_SINK_PATH=str(blocked))
        assert done.returncode == 0, done.stderr
        assert not blocked.exists()
    finally:
        pip("uninstall", "--quiet", "--yes", "conveyor-jsonl-sink")
    done = python(SCRIPT, CONVEYOR_JSONL_SINK_PATH=str(tmp_path / "gone.jsonl"))
    assert done.returncode == 0 and not (tmp_path / "gone.jsonl").exists()
