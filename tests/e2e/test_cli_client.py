"""The ``conveyor`` client commands against a real server (and an embedded URL)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

import conveyor

from .conftest import Served, serve


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd=cwd, input=stdin)  # fmt: skip


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
    assert missing.returncode == 1 and "not found" in missing.stderr and missing.stdout == ""
    bad = cli("push", "q", "x", "--options", '{"priorty": 1}', "--url", url, "--token", "t0k")
    assert bad.returncode == 2 and "VALIDATION_ERROR: options.priorty: unknown field" in bad.stderr
    down = cli("queues", "--url", "tcp://127.0.0.1:1")
    assert down.returncode == 3 and "CONNECTION_ERROR" in down.stderr  # unreachable: told apart from refused
    no_flow = cli("flow", "no-such-flow", "--url", url, "--token", "t0k")
    assert no_flow.returncode == 1 and "not found" in no_flow.stderr and no_flow.stdout == ""  # as get does
    as_json = cli("get", "00000000-0000-7000-8000-000000000000", "--url", url, "--token", "t0k", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout) == {"job": None}  # scripts read stdout
    api_url = cli("queues", "--url", url + "/api/v1/", "--token", "t0k")  # the API's own address works
    assert api_url.returncode == 0, api_url.stderr
    typo = cli("stats", "--url", f"sqlite:///{tmp_path / 'typo.db'}")
    assert typo.returncode == 2 and "no database at" in typo.stderr and not (tmp_path / "typo.db").exists()
    scheme = cli("queues", "--url", "htp://127.0.0.1:6790")
    assert scheme.returncode == 2 and "VALIDATION_ERROR: no storage plugin handles 'htp'" in scheme.stderr
    embedded = cli("push", "local", "job", "--url", f"sqlite:///{tmp_path / 'local.db'}")
    assert embedded.returncode == 0 and len(embedded.stdout.strip()) == 36


def test_sqlite_urls_that_would_lose_jobs_are_refused(tmp_path: Path) -> None:
    for url, problem in [
        ("sqlite://foo.db", "has a host part"),  # foo.db read as a host: the job went to :memory:
        ("sqlite:///:memory:", "in-memory database"),
        ("sqlite://", "in-memory database"),
    ]:
        pushed = cli("push", "lostq", "job", "--url", url, cwd=tmp_path)
        assert pushed.returncode == 2, (url, pushed)
        assert "VALIDATION_ERROR: --url" in pushed.stderr and problem in pushed.stderr, pushed.stderr
        assert pushed.stdout == ""
    listed = cli("queues", "--url", "sqlite://srv.db", cwd=tmp_path)
    assert listed.returncode == 2 and "has a host part" in listed.stderr
    upper = cli("queues", "--url", "SQLITE:///nothere.db", cwd=tmp_path)
    assert upper.returncode == 2 and "no database at 'nothere.db'" in upper.stderr
    unparsable = cli("queues", "--url", "sqlite:nothere2.db", cwd=tmp_path)
    assert unparsable.returncode == 2 and "VALIDATION_ERROR: --url is not a database URL" in unparsable.stderr
    assert "Traceback" not in unparsable.stderr
    assert list(tmp_path.iterdir()) == []  # no command created a file


@pytest.mark.parametrize(
    "url", ["tcp://127.0.0.1:notaport", "tcp://127.0.0.1:99999", "http://127.0.0.1:notaport", "http://127.0.0.1:99999"]
)
def test_a_bad_port_is_a_validation_error(url: str) -> None:
    result = cli("queues", "--url", url)
    assert result.returncode == 2 and f"VALIDATION_ERROR: url {url!r}: Port" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_unreachable() -> None:
    down = cli("queues", "--url", "postgresql://postgres@127.0.0.1:1/conveyor")
    assert down.returncode == 3 and "CONNECTION_ERROR: cannot open postgresql://" in down.stderr, down.stderr


def _cells(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def test_tables_escape_what_a_pusher_wrote_and_line_up_wide_text(server: Served) -> None:
    url = server.addresses["tcp"]
    names = ["\x1b]0;owned\x07\x1b[2J\x9b\u202e", "résumé-数据処理-ジョブ", "send"]
    errors = ["boom\x1b[31m", 'Traceback (most recent call last):\n  File "x.py"\nValueError: bad\tvalue', "ok"]
    with conveyor.connect_sync(url, token="t0k") as queue:
        ids = []
        for name, error in zip(names, errors, strict=True):
            ids.append(str(queue.push("cli-esc", name, {"city": "東京"}, max_attempts=1)))
            [job] = queue.pull("cli-esc")
            queue.fail(job.id, error)
    shown = cli("dlq", "cli-esc", "--url", url, "--token", "t0k")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 + len(names)  # header, rule, one line per job
    assert all(ch.isprintable() for line in lines for ch in line), shown.stdout
    assert r"\x1b]0;owned\x07\x1b[2J\x9b\u202e" in shown.stdout and r"call last):\n  File" in shown.stdout
    header, rule, *rows = lines
    starts = {_cells(header[: header.index("attempts")]), [m.start() for m in re.finditer("-+", rule)][2]}
    starts |= {_cells(row[: re.search(r"  1 +(boom|Traceback|ok)", row).start() + 2]) for row in rows}  # type: ignore[union-attr]
    assert len(starts) == 1, shown.stdout  # the attempts column starts in the same terminal cell on every line
    got = cli("get", ids[1], "--url", url, "--token", "t0k")
    assert "résumé-数据処理-ジョブ" in got.stdout and '{"city": "東京"}' in got.stdout, got.stdout
    assert r"last):\n  File" in got.stdout and "\n  File" not in got.stdout
    as_json = cli("get", ids[0], "--url", url, "--token", "t0k", "--json")
    assert '"city": "東京"' in as_json.stdout and "\x1b" not in as_json.stdout and "\x9b" not in as_json.stdout
    assert json.loads(as_json.stdout)["name"] == names[0]


def test_data_from_a_file_or_stdin(server: Served, tmp_path: Path) -> None:
    url = server.addresses["http"]
    big = {"rows": ["x" * 1000] * 200}  # 200 KB: over Linux's 128 KB cap on one argument
    (tmp_path / "data.json").write_text(json.dumps(big))
    from_file = cli("push", "cli-data", "big", "--data", f"@{tmp_path / 'data.json'}", "--url", url, "--token", "t0k")
    assert from_file.returncode == 0, from_file.stderr
    from_stdin = cli("push", "cli-data", "piped", "--data", "-", "--url", url, "--token", "t0k", stdin='{"n": 1}')
    assert from_stdin.returncode == 0, from_stdin.stderr
    for job_id, data in [(from_file.stdout.strip(), big), (from_stdin.stdout.strip(), {"n": 1})]:
        assert json.loads(cli("get", job_id, "--json", "--url", url, "--token", "t0k").stdout)["data"] == data
    missing = cli("push", "cli-data", "x", "--data", f"@{tmp_path / 'nope.json'}", "--url", url, "--token", "t0k")
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "No such file" in missing.stderr
    assert "@FILE" in cli("push", "--help").stdout
