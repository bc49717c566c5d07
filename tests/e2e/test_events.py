"""Event sinks against real ``conveyor serve`` processes: WebSocket clients (order, filters,
auth, two nodes on PostgreSQL), Prometheus scrapes parsed by prometheus-client, and webhook
registrations over HTTP and TCP delivered to a real receiver across a restart."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.conftest import Served, serve
from tests.webhook_receiver import receiving


@contextmanager
def events_socket(
    server: Served, token: str | None = None, query_token: str | None = None, **filters: str
) -> Iterator[ClientConnection]:
    url = server.url.replace("http://", "ws://") + "/api/v1/events"
    if query_token is not None:
        filters["token"] = query_token
    if filters:
        url += "?" + urlencode(filters)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        yield ws


def frame(ws: ClientConnection) -> dict[str, Any]:
    message = ws.recv(timeout=30)
    parsed: dict[str, Any] = json.loads(message)
    return parsed


def subscribed(ws: ClientConnection, http: httpx.Client, queue: str) -> None:
    """Push to ``queue`` until the socket shows one of those pushes: from then on the
    subscription is live (the server registers it just after the handshake). Then push a
    marker and read up to it, so no frame of these pushes is left to read."""
    pushed: set[str] = set()
    while True:
        pushed.add(http.post(f"/queues/{queue}/jobs", json={"name": "sync"}).json()["id"])
        try:
            got = json.loads(ws.recv(timeout=0.2))
        except TimeoutError:
            continue
        assert got["job_id"] in pushed
        break
    marker = http.post(f"/queues/{queue}/jobs", json={"name": "marker"}).json()["id"]
    while frame(ws)["job_id"] != marker:
        pass


def push(http: httpx.Client, queue: str, **body: Any) -> str:
    response = http.post(f"/queues/{queue}/jobs", json={"name": "work", **body})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def pull(http: httpx.Client, queue: str) -> dict[str, Any]:
    job: dict[str, Any] = http.get(f"/queues/{queue}/jobs", params={"wait_ms": 10_000}).json()["job"]
    assert job is not None
    return job


def test_a_client_sees_one_jobs_events_in_order(http: httpx.Client, sqlite_server: Served, queue: str) -> None:
    with events_socket(sqlite_server, queues=f"{queue},{queue}-sync") as ws:
        subscribed(ws, http, f"{queue}-sync")
        job_id = push(
            http, queue, data={"n": 1}, options={"max_attempts": 2, "backoff": "fixed", "backoff_delay_ms": 1}
        )
        assert pull(http, queue)["id"] == job_id
        assert http.post(f"/jobs/{job_id}/progress", json={"progress": 50, "message": "half"}).status_code == 200
        assert http.post(f"/jobs/{job_id}/fail", json={"error": "boom"}).json()["will_retry"] is True
        assert pull(http, queue)["id"] == job_id  # promoted by the server's maintenance loop
        assert http.post(f"/jobs/{job_id}/ack", json={"result": {"ok": 1}}).status_code == 200
        frames = [frame(ws) for _ in range(4)]
    assert [f["event"] for f in frames] == ["job.pushed", "job.progress", "job.failed", "job.completed"]
    assert {f["job_id"] for f in frames} == {job_id} and {f["queue"] for f in frames} == {queue}
    assert all(f["timestamp"].endswith("Z") for f in frames)
    assert frames[1]["data"] == {"progress": 50, "message": "half"}
    assert frames[2]["data"] == {"error": "boom", "attempt": 1, "will_retry": True}


def test_filters_by_event_and_queue_in_either_spelling(http: httpx.Client, sqlite_server: Served, queue: str) -> None:
    mine, other = f"{queue}-a", f"{queue}-b"
    with events_socket(sqlite_server, events="job_completed,job.dlq", queues=f"{mine},{queue}-sync") as ws:
        with events_socket(sqlite_server, queues=f"{queue}-sync", events="job.pushed") as sync:
            subscribed(sync, http, f"{queue}-sync")  # both sockets were opened before this one was live
        for q in (other, mine):
            job_id = push(http, q)
            pull(http, q)
            http.post(f"/jobs/{job_id}/ack")
        first = frame(ws)
        job_id = push(http, mine, options={"max_attempts": 1})
        pull(http, mine)
        http.post(f"/jobs/{job_id}/fail", json={"error": "dead"})
        second = frame(ws)
    # the other queue's completion and every push/failure came in between, and were filtered out
    assert (first["event"], first["queue"]) == ("job.completed", mine)
    assert (second["event"], second["queue"], second["job_id"]) == ("job.dlq", mine, job_id)


@pytest.mark.parametrize(
    ("bad", "named"), [({"events": "job.exploded"}, "job.exploded"), ({"queues": "not a queue"}, "queues")]
)
def test_bad_filters_get_an_error_frame_and_a_policy_close(
    sqlite_server: Served, bad: dict[str, str], named: str
) -> None:
    with events_socket(sqlite_server, **bad) as ws:
        error = frame(ws)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert error["ok"] is False and error["error"]["code"] == "VALIDATION_ERROR"
    assert named in error["error"]["message"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_metrics_are_scraped_and_parsed(http: httpx.Client, sqlite_server: Served, queue: str) -> None:
    ids = [push(http, queue) for _ in range(5)]
    for job_id in ids[:3]:
        assert pull(http, queue)["id"] == job_id
    http.post(f"/jobs/{ids[0]}/ack")
    http.post(f"/jobs/{ids[1]}/fail", json={"error": "x"})
    http.post(f"/jobs/{ids[4]}/cancel")
    stats = http.get(f"/queues/{queue}/stats").json()["counts"]

    # The counters come from events, which the server's metrics sink counts just after each
    # reply: scrape until it has counted the last one (the cancel).
    deadline = time.monotonic() + 30
    while True:
        texts = [httpx.get(sqlite_server.url + path).text for path in ("/metrics", "/api/v1/metrics/prometheus")]
        cancelled = f'conveyor_jobs_cancelled_total{{queue="{queue}"}} 1.0'
        if cancelled in texts[0] and cancelled in texts[1] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    families = {f.name: f for f in text_string_to_metric_families(texts[0])}
    assert {f.name for f in text_string_to_metric_families(texts[1])} == set(families)

    def value(name: str, sample: str | None = None, **labels: str) -> float:
        family = families[name]
        found = [
            s.value for s in family.samples
            if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items())
        ]  # fmt: skip
        assert found, (name, labels)
        return sum(found)

    assert value("conveyor_jobs_pushed", "conveyor_jobs_pushed_total", queue=queue) == 5
    assert value("conveyor_jobs_pulled", "conveyor_jobs_pulled_total", queue=queue) == 3
    assert value("conveyor_jobs_completed", "conveyor_jobs_completed_total", queue=queue) == 1
    assert value("conveyor_jobs_failed", "conveyor_jobs_failed_total", queue=queue) == 1
    assert value("conveyor_jobs_cancelled", "conveyor_jobs_cancelled_total", queue=queue) == 1
    for state in ("waiting", "active", "delayed", "completed", "dlq", "blocked"):
        assert value("conveyor_queue_jobs", queue=queue, state=state) == stats[state], state
    assert families["conveyor_queue_jobs"].type == "gauge"
    assert families["conveyor_operation_duration_seconds"].type == "histogram"
    assert (
        value("conveyor_operation_duration_seconds", "conveyor_operation_duration_seconds_count", operation="push") >= 5
    )
    requests = value(
        "conveyor_http_requests", "conveyor_http_requests_total",
        method="POST", route="/api/v1/queues/{queue}/jobs", status="201",
    )  # fmt: skip
    assert requests >= 5
    assert families["conveyor_http_request_duration_seconds"].type == "histogram"


def test_webhooks_over_http_survive_a_restart_and_deliver(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'hooks.db'}"
    with receiving() as receiver:
        first = serve(storage)
        try:
            with first.client() as http:
                created = http.post(
                    "/webhooks",
                    json={"url": receiver.url, "events": ["job_completed"], "queues": ["builds"], "secret": "k"},
                )
                assert created.status_code == 201, created.text
                body = created.json()
                hook = body["webhook"]
                assert body["id"] == hook["id"] and hook["has_secret"] is True and "secret" not in hook
                assert hook["events"] == ["job.completed"] and hook["queues"] == ["builds"]
                bad = http.post("/webhooks", json={"url": "ftp://x.test/"})
                assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "url"
        finally:
            assert first.stop() == 0, first.output
        second = serve(storage)
        try:
            with second.client() as http:
                assert http.get("/webhooks").json()["webhooks"] == [hook]
                assert http.get(f"/webhooks/{hook['id']}").json()["webhook"] == hook
                job_id = push(http, "builds")
                pull(http, "builds")
                http.post(f"/jobs/{job_id}/ack")
                [got] = receiver.wait_for(lambda r: len(r) >= 1)
                assert (got.json["event"], got.json["data"]["job_id"]) == ("job.completed", job_id)
                assert got.headers["X-Conveyor-Webhook-Id"] == hook["id"]
                assert http.delete(f"/webhooks/{hook['id']}").json() == {"ok": True}
                missing = http.get(f"/webhooks/{hook['id']}")
                assert missing.status_code == 404 and missing.json()["error"]["code"] == "WEBHOOK_NOT_FOUND"
                assert http.delete(f"/webhooks/{hook['id']}").status_code == 404
                assert http.get("/webhooks/not-a-uuid").json()["error"]["code"] == "VALIDATION_ERROR"
            host, port = second.addresses["tcp"].removeprefix("tcp://").rsplit(":", 1)
            with socket.create_connection((host, int(port))) as tcp:
                tcp.sendall(b'{"cmd":"webhook_list"}\n')
                assert json.loads(tcp.makefile().readline()) == {"ok": True, "webhooks": []}
        finally:
            assert second.stop() == 0, second.output


def test_the_dashboard_page_is_served_and_uses_the_api(sqlite_server: Served) -> None:
    page = httpx.get(sqlite_server.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '"api/v1/queues"' in page.text and '"api/v1/events"' in page.text


def test_auth_applies_to_websockets_and_metrics_stay_public(tmp_path: Path) -> None:
    server = serve(f"sqlite:///{tmp_path / 'auth.db'}", "--auth-token", "sesame")
    try:
        for bad in (None, "wrong"):
            with pytest.raises(InvalidStatus) as refused:
                with events_socket(server, token=bad):
                    pass
            assert refused.value.response.status_code == 403
        with server.client(headers={"Authorization": "Bearer sesame"}) as http:
            with events_socket(server, token="sesame", queues="a-sync") as ws:
                subscribed(ws, http, "a-sync")
            with events_socket(server, query_token="sesame", queues="b-sync") as ws:  # browsers cannot set headers
                subscribed(ws, http, "b-sync")
        with pytest.raises(InvalidStatus):
            with events_socket(server, query_token="wrong"):
                pass
        assert httpx.get(server.url + "/metrics").status_code == 200
        assert httpx.get(server.url + "/dashboard").status_code == 200  # a page without data
        assert httpx.get(server.url + "/api/v1/webhooks").status_code == 401
    finally:
        assert server.stop() == 0, server.output


def test_pages_of_other_origins_cannot_open_the_event_stream(tmp_path: Path) -> None:
    """With auth off (the default), any web page could otherwise read the events from a
    browser on the operator's machine: a browser names the page's origin, and only the
    server's own and ``websocket_origins`` are let in. Clients that send none are let in."""
    from websockets.typing import Origin

    server = serve(f"sqlite:///{tmp_path / 'origin.db'}", env={"CONVEYOR_WEBSOCKET_ORIGINS": '["https://ops.example"]'})
    try:
        url = server.url.replace("http://", "ws://") + "/api/v1/events"
        with pytest.raises(InvalidStatus) as refused:
            with connect(url, origin=Origin("http://evil.example"), open_timeout=30):
                pass
        assert refused.value.response.status_code == 403
        own = Origin(server.url.rstrip("/"))
        for allowed in (own, Origin("https://ops.example"), None):
            with connect(url, origin=allowed, open_timeout=30) as ws:
                ws.ping().wait(30)
    finally:
        assert server.stop() == 0, server.output


@pytest.mark.postgres
def test_a_client_on_one_node_sees_a_job_completed_on_another(pg_schema: str) -> None:
    node_a, node_b = serve(pg_schema), serve(pg_schema)
    try:
        with node_a.client() as on_a, node_b.client() as on_b:
            with events_socket(node_a, queues="shared,sync") as ws:
                subscribed(ws, on_a, "sync")
                job_id = push(on_b, "shared")
                assert pull(on_b, "shared")["id"] == job_id
                assert on_b.post(f"/jobs/{job_id}/ack", json={"result": 1}).status_code == 200
                frames = [frame(ws) for _ in range(2)]
        assert [(f["event"], f["job_id"]) for f in frames] == [("job.pushed", job_id), ("job.completed", job_id)]
    finally:
        assert node_a.stop() == 0, node_a.output
        assert node_b.stop() == 0, node_b.output
