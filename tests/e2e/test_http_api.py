"""The REST API of a real ``conveyor serve`` process over real HTTP (DESIGN.md §5)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import httpx
import pytest

from .conftest import Served


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is True, body
    return body


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and set(body) == {"ok", "error"}, body
    assert set(body["error"]) == {"code", "message", "details"} and body["error"]["code"] == code, body
    assert body["error"]["message"], body
    return body["error"]


def test_whole_job_lifecycle(http: httpx.Client, queue: str) -> None:
    pushed = ok(http.post(f"/queues/{queue}/jobs", json={
        "name": "compile", "data": {"repo": "acme/app"},
        "options": {"priority": 10, "metadata": {"workflow_id": "wf-1", "step_id": "build"}, "max_attempts": 2},
    }), 201)  # fmt: skip
    job_id = pushed["id"]
    assert uuid.UUID(job_id).version == 7
    job = ok(http.get(f"/queues/{queue}/jobs", params={"worker_id": "w1"}))["job"]
    assert job["id"] == job_id and job["state"] == "active" and job["worker_id"] == "w1"
    assert job["metadata"] == {"workflow_id": "wf-1", "step_id": "build"} and job["priority"] == 10
    ok(http.post(f"/jobs/{job_id}/progress", json={"progress": 150, "message": "half", "worker_id": "w1"}))
    ok(http.post(f"/jobs/{job_id}/heartbeat", json={"worker_id": "w1"}))
    failed = ok(http.post(f"/jobs/{job_id}/fail", json={"error": "exit 1"}))
    assert failed["retry"] is True and failed["will_retry"] is True and failed["next_attempt_at"]
    assert failed["state"] == "delayed"
    got = ok(http.get(f"/jobs/{job_id}"))["job"]
    assert got["progress"] == 100 and [entry["message"] for entry in got["logs"]] == ["half"]
    assert got["last_error"] == "exit 1" and got["attempt"] == 1 and got["state"] == "delayed"
    # the retry becomes waiting after its backoff (the server's maintenance loop promotes it)
    job = ok(http.get(f"/queues/{queue}/jobs", params={"wait_ms": 30_000}))["job"]
    assert job is not None and job["id"] == job_id and job["attempt"] == 1
    ok(http.post(f"/jobs/{job_id}/ack", json={"result": {"exit_code": 0}}))
    done = ok(http.get(f"/jobs/{job_id}"))["job"]
    assert done["state"] == "completed" and done["result"] == {"exit_code": 0}
    assert done["metadata"] == {"workflow_id": "wf-1", "step_id": "build"}
    stats = ok(http.get(f"/queues/{queue}/stats"))
    assert stats["queue"] == queue and stats["counts"]["completed"] == 1 and stats["counts"]["waiting"] == 0
    assert ok(http.get(f"/queues/{queue}/jobs"))["job"] is None


def test_flat_options_count_and_cancel(http: httpx.Client, queue: str) -> None:
    low = ok(http.post(f"/queues/{queue}/jobs", json={"name": "low", "priority": 1}), 201)["id"]
    high = ok(http.post(f"/queues/{queue}/jobs", json={"name": "high", "priority": 9}), 201)["id"]
    later = ok(http.post(f"/queues/{queue}/jobs", json={"name": "later", "delay_ms": 3_600_000}), 201)["id"]
    jobs = ok(http.get(f"/queues/{queue}/jobs", params={"count": 5}))["jobs"]
    assert [job["id"] for job in jobs] == [high, low]
    ok(http.post(f"/jobs/{later}/cancel"))
    assert ok(http.get(f"/jobs/{later}"))["job"]["state"] == "cancelled"
    assert ok(http.get(f"/queues/{queue}/jobs", params={"count": 5}))["jobs"] == []


def test_null_options_are_no_options(http: httpx.Client, queue: str) -> None:
    one = ok(http.post(f"/queues/{queue}/jobs", json={"name": "one", "priority": 2, "options": None}), 201)["id"]
    ids = ok(http.post(f"/queues/{queue}/jobs", json=[{"name": "b", "options": None}]), 201)["ids"]
    assert ok(http.get(f"/jobs/{one}"))["job"]["priority"] == 2
    assert ok(http.get(f"/jobs/{ids[0]}"))["job"]["state"] == "waiting"


def test_batch_push_and_ack_batch(http: httpx.Client, queue: str) -> None:
    ids = ok(http.post(f"/queues/{queue}/jobs", json=[{"name": f"j{i}", "data": i} for i in range(5)]), 201)["ids"]
    assert len(ids) == 5
    jobs = ok(http.get(f"/queues/{queue}/jobs", params={"count": 10}))["jobs"]
    assert sorted(job["id"] for job in jobs) == sorted(ids)
    items = [{"id": job_id, "result": n} for n, job_id in enumerate(ids[:4])]
    unknown = str(uuid.uuid4())
    results = ok(http.post("/jobs/ack-batch", json=[*items, {"id": unknown}, {"id": "nope"}]))["results"]
    assert [r["ok"] for r in results] == [True, True, True, True, False, False]
    assert results[4]["error"]["code"] == "JOB_NOT_FOUND" and results[5]["error"]["code"] == "VALIDATION_ERROR"
    assert ok(http.get(f"/jobs/{ids[2]}"))["job"]["result"] == 2
    assert ok(http.get(f"/queues/{queue}/stats"))["counts"]["completed"] == 4
    # an invalid item anywhere refuses the whole batch push: nothing stored
    bad = [{"name": "fine"}, {"name": "bad", "options": {"priority": "high"}}]
    err = error(http.post(f"/queues/{queue}/jobs", json=bad), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "jobs[1].options.priority"
    assert ok(http.get(f"/queues/{queue}/stats"))["counts"]["waiting"] == 0


def test_flow_with_cascade_and_status(http: httpx.Client, queue: str) -> None:
    flow_id = f"flow-{queue}"[:200]
    submitted = ok(http.post("/flows", json={"flow_id": flow_id, "steps": [
        {"key": "build", "queue": queue, "name": "build"},
        {"key": "test", "queue": queue, "name": "test", "needs": ["build"]},
        {"key": "ship", "queue": queue, "name": "ship", "needs": ["test"], "max_attempts": 1},
    ]}), 201)  # fmt: skip
    ids = submitted["ids"]
    status = ok(http.get(f"/flows/{flow_id}"))
    assert status["summary"]["total"] == 3 and status["summary"]["blocked"] == 2 and status["summary"]["waiting"] == 1
    build = ok(http.get(f"/queues/{queue}/jobs"))["job"]
    assert build["id"] == ids["build"]
    ok(http.post(f"/jobs/{build['id']}/ack", json={"result": "built"}))
    test = ok(http.get(f"/queues/{queue}/jobs"))["job"]
    assert test["id"] == ids["test"] and test["flow_id"] == flow_id
    # test fails for good: ship (blocked on it) cascades to the DLQ
    for _ in range(3):
        outcome = ok(http.post(f"/jobs/{test['id']}/fail", json={"error": "red"}))
        if not outcome["will_retry"]:
            break
        test = ok(http.get(f"/queues/{queue}/jobs", params={"wait_ms": 30_000}))["job"]
    assert outcome["state"] == "dlq" and outcome["next_attempt_at"] is None
    summary = ok(http.get(f"/flows/{flow_id}"))["summary"]
    assert summary == {**summary, "completed": 1, "dlq": 2, "blocked": 0, "total": 3}
    dlq = ok(http.get(f"/queues/{queue}/dlq"))["jobs"]
    assert {job["id"] for job in dlq} == {ids["test"], ids["ship"]}
    assert ok(http.get(f"/queues/{queue}/dlq", params={"limit": 1}))["jobs"][0]["id"] in {ids["test"], ids["ship"]}


def test_follow_ups_are_pushed_on_ack(http: httpx.Client, queue: str) -> None:
    parent = ok(http.post(f"/queues/{queue}/jobs", json={
        "name": "ocr", "flow_id": f"fu-{queue}"[:200],
        "metadata": {"run": 7, "follow_ups": [{"queue": f"{queue}-next", "name": "render"}]},
    }), 201)["id"]  # fmt: skip
    ok(http.get(f"/queues/{queue}/jobs"))
    ok(http.post(f"/jobs/{parent}/ack", json={"result": {"pages": 3}}))
    child = ok(http.get(f"/queues/{queue}-next/jobs"))["job"]
    assert child["name"] == "render" and child["depends_on"] == [parent]
    assert child["data"] == {"pages": 3} and child["metadata"] == {"run": 7}
    assert child["flow_id"] == f"fu-{queue}"[:200]


def test_pause_resume_queues_list(http: httpx.Client, queue: str) -> None:
    ok(http.post(f"/queues/{queue}/jobs", json={"name": "before"}), 201)
    ok(http.post(f"/queues/{queue}/pause"))
    error(http.post(f"/queues/{queue}/jobs", json={"name": "during"}), 503, "QUEUE_PAUSED")
    assert ok(http.get(f"/queues/{queue}/jobs"))["job"] is None
    listed = {q["name"]: q for q in ok(http.get("/queues"))["queues"]}
    assert listed[queue]["paused"] is True and listed[queue]["counts"]["waiting"] == 1
    ok(http.post(f"/queues/{queue}/resume"))
    assert ok(http.get(f"/queues/{queue}/jobs"))["job"]["name"] == "before"
    assert {q["name"]: q for q in ok(http.get("/queues"))["queues"]}[queue]["paused"] is False


def test_long_poll_is_woken_by_a_push(http: httpx.Client, sqlite_server: Served, queue: str) -> None:
    got: dict[str, Any] = {}
    started = threading.Event()

    def wait() -> None:
        with sqlite_server.client() as other:
            started.set()
            got.update(ok(other.get(f"/queues/{queue}/jobs", params={"wait_ms": 120_000})))

    waiter = threading.Thread(target=wait)
    waiter.start()
    started.wait()
    job_id = ok(http.post(f"/queues/{queue}/jobs", json={"name": "wake"}), 201)["id"]
    waiter.join(150)
    assert got["job"]["id"] == job_id  # long before the 120 s wait ran out: join would have timed out


def test_every_error_code_has_its_status_and_envelope(http: httpx.Client, queue: str) -> None:
    missing = str(uuid.uuid4())
    err = error(http.get(f"/jobs/{missing}"), 404, "JOB_NOT_FOUND")
    assert missing in err["message"]
    error(http.post(f"/jobs/{missing}/ack"), 404, "JOB_NOT_FOUND")
    waiting = ok(http.post(f"/queues/{queue}/jobs", json={"name": "w", "unique_key": "k1"}), 201)["id"]
    error(http.post(f"/jobs/{waiting}/ack"), 409, "INVALID_STATE")
    err = error(http.post(f"/queues/{queue}/jobs", json={"name": "w2", "unique_key": "k1"}), 409, "DUPLICATE_KEY")
    assert "k1" in err["message"]
    err = error(http.post(f"/queues/{queue}/jobs", json={"name": ""}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "name"
    error(
        http.post(f"/queues/{queue}/jobs", json={"name": "x", "data": "y" * (1024 * 1024 + 1)}), 413, "VALIDATION_ERROR"
    )
    error(http.post(f"/queues/{queue}/jobs", content=b"name=x", headers={"content-type": "text/plain"}), 415,
          "VALIDATION_ERROR")  # fmt: skip
    error(http.get("/no/such/route"), 404, "NOT_FOUND")
    error(http.delete(f"/queues/{queue}/jobs"), 405, "METHOD_NOT_ALLOWED")
    ok(http.post(f"/queues/{queue}/pause"))
    error(http.post(f"/queues/{queue}/jobs", json={"name": "p"}), 503, "QUEUE_PAUSED")


@pytest.mark.parametrize("raw", ["1_0", " 3", "3 ", "٣", "1e2", "0x10", ""])
def test_integer_query_parameters_are_plain_decimal_digits(http: httpx.Client, queue: str, raw: str) -> None:
    """What Python's ``int()`` also takes (underscores, spaces, other scripts' digits) is not
    an integer on the wire: refused by name, as TCP refuses a non-integer count."""
    err = error(http.get(f"/queues/{queue}/jobs", params={"count": raw}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "count"


def test_health_and_openapi_are_served(sqlite_server: Served) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as root:
        assert ok(root.get("/health"))["status"] == "ok"
        assert ok(root.get("/api/v1/health"))["version"]
        for path in ("/openapi.json", "/api/v1/openapi.json"):
            document = root.get(path).json()
            assert document["info"]["title"] == "Conveyor" and "/api/v1/queues/{queue}/jobs" in document["paths"]
        docs = root.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
