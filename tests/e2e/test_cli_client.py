"""The ``conveyor`` client commands against a real server (and an embedded URL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import Served, serve


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    served = serve(f"sqlite:///{tmp_path_factory.mktemp('cli') / 'cli.db'}", "--auth-token", "t0k")
    yield served
    assert served.stop() == 0, served.output


@pytest.mark.parametrize("transport", ["http", "tcp"])
def test_client_commands(server: Served, transport: str) -> None:
    url = server.addresses[transport]
    queue = f"cli-{transport}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        result = cli(*args, "--url", url, "--token", "t0k")
        assert result.returncode == 0, result.stderr
        return result

    options = json.dumps({"priority": 4, "flow_id": f"fl-{transport}"})
    job_id = run("push", queue, "resize", "--data", '{"w": 64}', "--options", options).stdout.strip()
    shown = run("get", job_id).stdout
    assert "resize" in shown and "waiting" in shown and '{"w": 64}' in shown
    as_json = json.loads(run("get", job_id, "--json").stdout)
    assert as_json["id"] == job_id and as_json["priority"] == 4
    assert json.loads(run("stats", queue, "--json").stdout)["waiting"] == 1
    assert queue in run("queues").stdout
    run("pause", queue)
    assert {q["name"]: q["paused"] for q in json.loads(run("queues", "--json").stdout)}[queue] is True
    run("resume", queue)
    flow = run("flow", f"fl-{transport}").stdout
    assert job_id in flow and "waiting" in flow and "1 jobs: waiting 1" in flow
    assert "empty" in run("dlq", queue).stdout


def test_errors_and_exit_codes(server: Served, tmp_path: Path) -> None:
    url = server.addresses["http"]
    refused = cli("queues", "--url", url)
    assert refused.returncode == 2 and "UNAUTHORIZED" in refused.stderr
    from_env = cli("queues", "--url", url, env={"CONVEYOR_TOKEN": "t0k"})
    assert from_env.returncode == 0, from_env.stderr
    missing = cli("get", "00000000-0000-7000-8000-000000000000", "--url", url, "--token", "t0k")
    assert missing.returncode == 1 and "not found" in missing.stdout
    bad = cli("push", "q", "x", "--options", '{"priorty": 1}', "--url", url, "--token", "t0k")
    assert bad.returncode == 2 and "VALIDATION_ERROR: options.priorty: unknown field" in bad.stderr
    down = cli("queues", "--url", "tcp://127.0.0.1:1")
    assert down.returncode == 3 and "CONNECTION_ERROR" in down.stderr  # unreachable: told apart from refused
    no_flow = cli("flow", "no-such-flow", "--url", url, "--token", "t0k")
    assert no_flow.returncode == 1 and "not found" in no_flow.stdout  # as get answers a missing job
    api_url = cli("queues", "--url", url + "/api/v1/", "--token", "t0k")  # the API's own address works
    assert api_url.returncode == 0, api_url.stderr
    typo = cli("stats", "--url", f"sqlite:///{tmp_path / 'typo.db'}")
    assert typo.returncode == 2 and "no database at" in typo.stderr and not (tmp_path / "typo.db").exists()
    scheme = cli("queues", "--url", "htp://127.0.0.1:6790")
    assert scheme.returncode == 2 and "VALIDATION_ERROR: no storage plugin handles 'htp'" in scheme.stderr
    embedded = cli("push", "local", "job", "--url", f"sqlite:///{tmp_path / 'local.db'}")
    assert embedded.returncode == 0 and len(embedded.stdout.strip()) == 36
