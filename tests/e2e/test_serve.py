"""``conveyor serve`` as an operator runs it: configuration sources, auth, graceful shutdown,
clear startup errors, and several servers sharing one PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from ..conftest import PG_URL
from .conftest import Served, serve
from .test_http_api import error, ok


def test_auth_tokens_from_every_source_and_public_paths(tmp_path: Path) -> None:
    config = tmp_path / "conveyor.toml"
    config.write_text(f'storage = "sqlite:///{tmp_path}/file.db"\nauth_tokens = ["file-token"]\n')
    served = Served(["--config", str(config), "--http-port", "0", "--tcp-port", "0"],
                    env={"CONVEYOR_AUTH_TOKENS": "env-one, env-two"})  # fmt: skip
    try:
        url = served.wait_listening()
        assert f"storage sqlite:///{tmp_path}/file.db" in served.output  # from the file
        with httpx.Client(base_url=url, timeout=30) as anonymous:
            err = error(anonymous.get("/api/v1/queues"), 401, "UNAUTHORIZED")
            assert "Bearer" in err["message"]
            assert anonymous.get("/api/v1/queues").headers["www-authenticate"] == "Bearer"
            error(anonymous.get("/api/v1/no/such/route"), 401, "UNAUTHORIZED")  # routes are not revealed
            for public in ("/health", "/api/v1/health", "/openapi.json", "/api/v1/openapi.json", "/docs"):
                assert anonymous.get(public).status_code == 200, public
            for header in ("Bearer file-token", "Bearer wrong", "Basic env-one", "Bearer  x", "env-one"):
                error(anonymous.get("/api/v1/queues", headers={"Authorization": header}), 401, "UNAUTHORIZED")
        for token in ("env-one", "env-two"):  # the environment overrides the file
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
                ok(client.post("/api/v1/queues/q/jobs", json={"name": "authorized"}), 201)
                assert ok(client.get("/api/v1/queues/q/stats"))["counts"]["waiting"] >= 1
    finally:
        assert served.stop() == 0, served.output
    # the command line overrides the environment
    cli = Served(["--config", str(config), "--http-port", "0", "--tcp-port", "0", "--auth-token", "cli"],
                 env={"CONVEYOR_AUTH_TOKENS": "env-one"})  # fmt: skip
    try:
        with httpx.Client(base_url=cli.wait_listening(), timeout=30) as client:
            error(client.get("/api/v1/queues", headers={"Authorization": "Bearer env-one"}), 401, "UNAUTHORIZED")
            ok(client.get("/api/v1/queues", headers={"Authorization": "Bearer cli"}))
    finally:
        assert cli.stop() == 0, cli.output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_finishes_in_flight_requests(tmp_path: Path, sig: int) -> None:
    db = tmp_path / "conveyor.db"
    served = serve(f"sqlite:///{db}")
    with served.client() as http:
        kept = ok(http.post("/queues/q/jobs", json={"name": "kept", "data": {"n": 1}}), 201)["id"]
        replies: list[httpx.Response] = []
        started = threading.Event()

        def long_poll() -> None:
            with served.client() as other:
                started.set()
                replies.append(other.get("/queues/empty/jobs", params={"wait_ms": 120_000}))

        poller = threading.Thread(target=long_poll)
        poller.start()
        started.wait()
        time.sleep(1)  # let the poll reach the server (an idle long-poll leaves no trace to wait on)
        assert served.stop(sig) == 0, served.output
        poller.join(60)
    assert not poller.is_alive()
    [reply] = replies
    assert reply.status_code == 200 and reply.json() == {"ok": True, "job": None}  # answered, not cut off
    assert "finishing in-flight requests" in served.output and served.output.rstrip().endswith("stopped")
    assert not Path(f"{db}-wal").exists()  # storage closed cleanly: the WAL was checkpointed away
    again = serve(f"sqlite:///{db}")
    try:
        with again.client() as http:
            assert ok(http.get(f"/jobs/{kept}"))["job"]["data"] == {"n": 1}
    finally:
        assert again.stop() == 0, again.output


def test_startup_errors_are_clear(tmp_path: Path, sqlite_server: Served) -> None:
    port = sqlite_server.url.rsplit(":", 1)[1]

    def start(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "conveyor", "serve", *args], capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", **env})  # fmt: skip

    taken = start("--storage", f"sqlite:///{tmp_path}/x.db", "--http-port", port, "--tcp-port", "0")
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
    missing = start("--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml' does not exist" in missing.stderr
    (tmp_path / "bad.toml").write_text("http_prot = 1\n")
    unknown = start("--config", str(tmp_path / "bad.toml"))
    assert unknown.returncode == 2 and "setting http_prot: unknown setting" in unknown.stderr
    env_bad = start("--storage", f"sqlite:///{tmp_path}/x.db", CONVEYOR_HTTP_PORT="seventy")
    assert env_bad.returncode == 2 and "setting http_port" in env_bad.stderr
    no_storage = start("--storage", "nope://x", "--http-port", "0")
    assert no_storage.returncode == 2 and "no storage plugin handles 'nope'" in no_storage.stderr


@pytest.mark.postgres
@pytest.mark.slow
def test_two_servers_on_one_postgres_complete_each_job_exactly_once(pg_schema: str) -> None:
    first, second = serve(pg_schema), serve(pg_schema)
    try:
        clients = [first.client(), second.client()]
        # a long-poll on one server is woken by a push on the other (LISTEN/NOTIFY)
        woken: list[dict[str, Any]] = []
        poller = threading.Thread(
            target=lambda: woken.append(ok(clients[0].get("/queues/wake/jobs", params={"wait_ms": 120_000})))
        )
        poller.start()
        time.sleep(0.5)
        wake_id = ok(clients[1].post("/queues/wake/jobs", json={"name": "ping"}), 201)["id"]
        poller.join(150)
        assert woken and woken[0]["job"]["id"] == wake_id
        pushed: list[str] = []
        for n in range(5):
            batch = [{"name": "work", "data": n * 1000 + i} for i in range(1000)]
            pushed += ok(clients[n % 2].post("/queues/shared/jobs", json=batch), 201)["ids"]
        acked: list[str] = []
        failures: list[Any] = []
        lock = threading.Lock()

        def work(client: httpx.Client, worker: str) -> None:
            with client:
                while True:
                    jobs = ok(client.get("/queues/shared/jobs", params={"count": 50, "worker_id": worker}))["jobs"]
                    if not jobs:
                        return
                    items = [{"id": job["id"], "result": job["data"]} for job in jobs]
                    results = ok(client.post("/jobs/ack-batch", json={"items": items, "worker_id": worker}))["results"]
                    with lock:
                        acked.extend(job["id"] for job in jobs)
                        failures.extend(r for r in results if not r["ok"])

        workers = [
            threading.Thread(target=work, args=(served.client(), f"{name}-{i}"))
            for name, served in (("a", first), ("b", second))
            for i in range(3)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(300)
        assert not failures, failures[:3]
        assert len(acked) == 5000 and set(acked) == set(pushed)  # every job, none twice
        counts = ok(clients[0].get("/queues/shared/stats"))["counts"]
        assert counts["completed"] == 5000 and counts["active"] == 0 and counts["waiting"] == 0
        for client in clients:
            client.close()
    finally:
        assert first.stop() == 0, first.output
        assert second.stop() == 0, second.output


@pytest.mark.postgres
def test_a_storage_failure_is_an_internal_error_and_the_server_recovers(pg_schema: str) -> None:
    schema = pg_schema.rsplit("schema=", 1)[1]
    served = serve(pg_schema)
    try:
        with served.client() as http:
            ok(http.post("/queues/q/jobs", json={"name": "before"}), 201)
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'ALTER TABLE "{schema}".conveyor_jobs RENAME TO conveyor_jobs_away')
            try:
                err = error(http.post("/queues/q/jobs", json={"name": "during"}), 500, "INTERNAL_ERROR")
                assert "conveyor_jobs" in err["message"] or "storage" in err["message"].lower()
                assert ok(http.get("/health"))["status"] == "ok"
            finally:
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'ALTER TABLE "{schema}".conveyor_jobs_away RENAME TO conveyor_jobs')
            ok(http.post("/queues/q/jobs", json={"name": "after"}), 201)
            assert ok(http.get("/queues/q/stats"))["counts"]["waiting"] == 2
    finally:
        assert served.stop() == 0, served.output
