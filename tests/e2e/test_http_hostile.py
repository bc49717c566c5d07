"""Hostile input against a real server: each request gets a clear error envelope naming the
problem, the server stays healthy, and nothing is stored."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

import conveyor
from conveyor import LimitExceededError

from .conftest import Served
from .test_http_api import error, ok


def assert_nothing_stored(http: httpx.Client, queue: str) -> None:
    assert ok(http.get("/health"))["status"] == "ok"
    assert ok(http.get(f"/queues/{queue}/stats"))["counts"] == {
        "waiting": 0, "active": 0, "delayed": 0, "completed": 0, "failed": 0, "dlq": 0, "blocked": 0, "cancelled": 0,
    }  # fmt: skip
    assert queue not in {q["name"] for q in ok(http.get("/queues"))["queues"]}


def raw_request(served: Served, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (a lying or huge request httpx would not send) and read the reply."""
    address = urlsplit(served.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload)


MALFORMED = [
    (b'{"name": "x",', "not valid JSON"),
    (b'{"name": "x", "data": NaN}', "not valid JSON"),
    (b'{"name": "x", "data": "\xff\xfe"}', "not valid JSON"),
    ('{"name": "x"}'.encode("utf-16"), "not valid JSON"),  # the protocol is UTF-8, as on TCP
    (b'\xef\xbb\xbf{"name": "x"}', "not valid JSON"),  # a UTF-8 byte order mark
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b'"just a string"', "must be a JSON object"),
    (b"42", "must be a JSON object"),
]


@pytest.mark.parametrize(
    ("body", "says"), MALFORMED, ids=["truncated", "nan", "bad-utf8", "utf-16", "bom", "deep", "string", "number"]
)
def test_malformed_json(http: httpx.Client, queue: str, body: bytes, says: str) -> None:
    err = error(http.post(f"/queues/{queue}/jobs", content=body, headers={"content-type": "application/json"}),
                400, "VALIDATION_ERROR")  # fmt: skip
    assert says in err["message"] and err["details"]["field"] == "body"
    assert_nothing_stored(http, queue)


def test_two_megabyte_bodies(http: httpx.Client, sqlite_server: Served, queue: str) -> None:
    # 2 MB of data inside the 2 MiB body limit: refused by the 1 MB data limit
    err = error(
        http.post(f"/queues/{queue}/jobs", json={"name": "big", "data": "x" * 2_000_000}), 413, "VALIDATION_ERROR"
    )
    assert err["details"]["field"] == "data" and err["details"]["limit"] == 1024 * 1024
    # a body over the limit, declared: refused from the headers; what comes of it is dropped, and
    # the answer comes when the client stops sending (here after `DISCARD_IDLE_S` without a byte)
    head = (f"POST /api/v1/queues/{queue}/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {3 * 1024 * 1024}\r\n\r\n")  # fmt: skip
    status, reply = raw_request(sqlite_server, head, b'{"name": "big", "data": "')  # the rest never comes
    assert (
        status == 413 and reply["error"]["code"] == "VALIDATION_ERROR" and reply["error"]["details"]["field"] == "body"
    )
    assert "limit is 2097152 bytes" in reply["error"]["message"]
    # a chunked body (no length) is cut off as soon as it passes the limit
    chunk = b"x" * 65536
    head = (f"POST /api/v1/queues/{queue}/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(33)) + b"0\r\n\r\n"
    status, reply = raw_request(sqlite_server, head, body)
    assert status == 413 and "more than 2097152 bytes" in reply["error"]["message"]
    assert_nothing_stored(http, queue)


@pytest.mark.parametrize("size", [2 * 1024 * 1024 + 1, 8_000_000, 30_000_000])
def test_an_oversize_body_still_sent_gets_the_413_not_a_reset(
    http: httpx.Client, sqlite_server: Served, queue: str, size: int
) -> None:
    # the async httpx client writes the whole body before it reads: a server that answers and
    # closes on the unread rest resets the connection, and the client sees a ReadError instead
    body = b'{"name": "big", "data": "' + b"x" * (size - 27) + b'"}'

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(base_url=sqlite_server.url + "/api/v1", timeout=60) as client:
            return await client.post(
                f"/queues/{queue}/jobs", content=body, headers={"content-type": "application/json"}
            )

    err = error(anyio.run(post), 413, "VALIDATION_ERROR")
    assert err["details"] == {"field": "body", "limit": 2 * 1024 * 1024, "size": size}
    assert_nothing_stored(http, queue)


@pytest.mark.parametrize("size", [2_200_000, 30_000_000])
def test_the_http_client_raises_limit_exceeded_for_an_oversize_body(
    http: httpx.Client, sqlite_server: Served, queue: str, size: int
) -> None:
    async def push() -> None:
        async with conveyor.connect(sqlite_server.url) as client:
            with pytest.raises(LimitExceededError) as err:
                await client.push(queue, "big", "x" * size)
            assert err.value.details["limit"] == 2 * 1024 * 1024
            assert await client.push(queue, "small") is not None  # the client carries on

    anyio.run(push)
    assert ok(http.get(f"/queues/{queue}/stats"))["counts"]["waiting"] == 1


def test_oversize_metadata_names_and_error_text(http: httpx.Client, queue: str) -> None:
    err = error(http.post(f"/queues/{queue}/jobs", json={"name": "m", "metadata": {"blob": "m" * 70_000}}),
                413, "VALIDATION_ERROR")  # fmt: skip
    assert err["details"]["field"] == "options.metadata" and err["details"]["limit"] == 64 * 1024
    err = error(http.post(f"/queues/{'q' * 300}/jobs", json={"name": "m"}), 413, "VALIDATION_ERROR")
    assert err["details"]["field"] == "queue" and "256" in err["message"]
    error(http.post(f"/queues/{queue}/jobs", json={"name": "n" * 1025}), 413, "VALIDATION_ERROR")
    error(http.post("/queues/bad%20name/jobs", json={"name": "m"}), 400, "VALIDATION_ERROR")
    assert_nothing_stored(http, queue)
    job_id = ok(http.post(f"/queues/{queue}/jobs", json={"name": "real"}), 201)["id"]
    ok(http.get(f"/queues/{queue}/jobs"))
    err = error(http.post(f"/jobs/{job_id}/fail", json={"error": "e" * 20_000}), 413, "VALIDATION_ERROR")
    assert err["details"]["field"] == "error"
    assert ok(http.get(f"/jobs/{job_id}"))["job"]["state"] == "active"  # the refused fail changed nothing


@pytest.mark.parametrize("bad_id", ["abc", "1234", "00000000-0000-0000-0000-00000000000Z", "%00", "' OR 1=1 --"])
def test_non_uuid_ids(http: httpx.Client, bad_id: str) -> None:
    for response in (http.get(f"/jobs/{bad_id}"), http.post(f"/jobs/{bad_id}/ack"),
                     http.post(f"/jobs/{bad_id}/fail", json={"error": "x"}), http.post(f"/jobs/{bad_id}/cancel")):  # fmt: skip
        err = error(response, 400, "VALIDATION_ERROR")
        assert err["details"]["field"] == "id" and "UUID" in err["message"]


@pytest.mark.parametrize("count", ["-1", "0", "1001", "99999999999999999999999", "1.5", "many"])
def test_bad_counts(http: httpx.Client, queue: str, count: str) -> None:
    ok(http.post(f"/queues/{queue}/jobs", json={"name": "stays"}), 201)
    err = error(http.get(f"/queues/{queue}/jobs", params={"count": count}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "count"
    error(http.get(f"/queues/{queue}/jobs", params={"wait_ms": "-5"}), 400, "VALIDATION_ERROR")
    error(http.get(f"/queues/{queue}/dlq", params={"limit": "100000"}), 400, "VALIDATION_ERROR")
    assert ok(http.get(f"/queues/{queue}/stats"))["counts"]["waiting"] == 1  # nothing was claimed


def test_unknown_fields_are_refused(http: httpx.Client, queue: str) -> None:
    err = error(http.post(f"/queues/{queue}/jobs", json={"name": "u", "colour": "red"}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "colour" and "unknown field" in err["message"]
    err = error(
        http.post(f"/queues/{queue}/jobs", json={"name": "u", "options": {"priorty": 3}}), 400, "VALIDATION_ERROR"
    )
    assert err["details"]["field"] == "options.priorty"
    err = error(http.post(f"/queues/{queue}/jobs", json={"name": "u", "queue": "elsewhere"}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "queue"
    err = error(http.post("/flows", json={"steps": [{"key": "a", "queue": queue, "name": "a"}], "owner": "me"}),
                400, "VALIDATION_ERROR")  # fmt: skip
    assert err["details"]["field"] == "owner"
    assert_nothing_stored(http, queue)
    job_id = ok(http.post(f"/queues/{queue}/jobs", json={"name": "real"}), 201)["id"]
    ok(http.get(f"/queues/{queue}/jobs"))
    err = error(http.post(f"/jobs/{job_id}/ack", json={"result": 1, "extra": True}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "extra"
    err = error(http.post(f"/jobs/{job_id}/ack", json=[1, 2]), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "body"
    err = error(http.post(f"/jobs/{job_id}/progress", json={"progress": "half"}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "progress"
    err = error(http.post(f"/jobs/{job_id}/fail", json={"error": 5}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == "error" and "string" in err["message"]
    assert ok(http.get(f"/jobs/{job_id}"))["job"]["state"] == "active"


def test_a_long_poll_whose_client_left_claims_nothing(http: httpx.Client, sqlite_server: Served, queue: str) -> None:
    """As over TCP: a job arriving after the client of a waiting pull disconnected is not
    claimed for it (it would sit active until the stall timeout and lose an attempt)."""
    address = urlsplit(sqlite_server.url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(f"GET /api/v1/queues/{queue}/jobs?wait_ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.5)  # the pull is waiting
    time.sleep(0.5)  # the server reads the disconnect
    job_id = ok(http.post(f"/queues/{queue}/jobs", json={"name": "j", "max_attempts": 1}), 201)["id"]
    assert ok(http.get(f"/queues/{queue}/jobs"))["job"]["id"] == job_id  # still there to pull


def test_server_is_healthy_after_all_of_it(http: httpx.Client, queue: str) -> None:
    job_id = ok(http.post(f"/queues/{queue}/jobs", json={"name": "after"}), 201)["id"]
    assert ok(http.get(f"/queues/{queue}/jobs"))["job"]["id"] == job_id
    ok(http.post(f"/jobs/{job_id}/ack"))


def test_a_client_leaving_mid_way_through_an_oversize_chunked_body_logs_nothing(
    sqlite_server: Served, queue: str
) -> None:
    address = urlsplit(sqlite_server.url)
    head = (f"POST /api/v1/queues/{queue}/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + chunk * 40)  # past the 2 MiB limit, and never finished
    time.sleep(1.5)  # the server drains what it can, then meets the disconnect
    assert "Traceback" not in sqlite_server.output, sqlite_server.output[-3000:]
