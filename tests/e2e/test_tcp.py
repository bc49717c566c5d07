"""RustQueue's line protocol against a real ``conveyor serve``, over raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conveyor import commands

from .conftest import Served, serve


class Line:
    """A raw protocol connection: send JSON lines (or bytes), read reply lines."""

    def __init__(self, served: Served, timeout: float = 30) -> None:
        address = urlsplit(served.addresses["tcp"])
        self.sock = socket.create_connection((address.hostname, address.port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.sent: set[str] = set()
        """Every ``cmd`` sent, so a test can tell which commands it covered."""

    def send(self, *requests: dict[str, Any] | bytes) -> None:
        self.sent |= {r["cmd"] for r in requests if isinstance(r, dict) and "cmd" in r}
        self.sock.sendall(b"".join(r if isinstance(r, bytes) else json.dumps(r).encode() + b"\n" for r in requests))

    def reply(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        return json.loads(line)

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(request)
        return self.reply()

    def closed(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    served = serve(f"sqlite:///{tmp_path_factory.mktemp('tcp') / 'tcp.db'}",
                   env={"CONVEYOR_MAX_REQUEST_BYTES": "65536"})  # fmt: skip
    yield served
    assert served.stop() == 0, served.output


@pytest.fixture
def conn(tcp_server: Served) -> Any:
    line = Line(tcp_server)
    yield line
    line.close()


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply["ok"] is True, reply
    return reply


def err(reply: dict[str, Any], code: str) -> dict[str, Any]:
    assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["message"], reply
    return reply["error"]


def test_every_command(conn: Line, queue: str) -> None:
    job_id = ok(conn.call({"cmd": "push", "queue": queue, "name": "a", "data": {"n": 1}, "options": {"priority": 5}}))[
        "id"
    ]
    ids = ok(
        conn.call({"cmd": "push_batch", "queue": queue, "jobs": [{"name": "b", "max_attempts": 1}, {"name": "c"}]})
    )["ids"]
    assert ok(conn.call({"cmd": "pull", "queue": queue, "worker_id": "w"}))["job"]["id"] == job_id
    ok(conn.call({"cmd": "progress", "id": job_id, "progress": 60, "message": "m"}))
    ok(conn.call({"cmd": "heartbeat", "id": job_id, "worker_id": "w"}))
    ok(conn.call({"cmd": "ack", "id": job_id, "result": {"r": 1}}))
    assert ok(conn.call({"cmd": "get", "id": job_id}))["job"]["result"] == {"r": 1}
    b = ok(conn.call({"cmd": "pull", "queue": queue, "count": 1}))["job"]["id"]
    assert b == ids[0]
    failed = ok(conn.call({"cmd": "fail", "id": b, "error": "boom"}))
    assert failed["will_retry"] is False and failed["retry"] is False and failed["state"] == "dlq"
    assert [j["id"] for j in ok(conn.call({"cmd": "dlq", "queue": queue}))["jobs"]] == [b]
    ok(conn.call({"cmd": "cancel", "id": ids[1]}))
    counts = ok(conn.call({"cmd": "stats", "queue": queue}))["counts"]
    assert (counts["completed"], counts["dlq"], counts["cancelled"]) == (1, 1, 1)
    ok(conn.call({"cmd": "queue_pause", "queue": queue}))
    err(conn.call({"cmd": "push", "queue": queue, "name": "late"}), "QUEUE_PAUSED")
    assert {q["name"]: q for q in ok(conn.call({"cmd": "queues"}))["queues"]}[queue]["paused"] is True
    ok(conn.call({"cmd": "queue_resume", "queue": queue}))
    flow_id = f"tcp-{uuid.uuid4()}"
    submitted = ok(conn.call({"cmd": "submit_flow", "flow_id": flow_id, "steps": [
        {"key": "x", "queue": queue, "name": "x"}, {"key": "y", "queue": queue, "name": "y", "needs": ["x"]}]}))  # fmt: skip
    status = ok(conn.call({"cmd": "flow", "flow_id": flow_id}))
    assert status["summary"]["total"] == 2 and status["summary"]["blocked"] == 1
    assert {j["id"] for j in status["jobs"]} == set(submitted["ids"].values())
    ok(conn.call({"cmd": "push", "queue": queue, "name": "back"}))
    back = ok(conn.call({"cmd": "pull", "queue": queue, "worker_id": "w"}))["job"]
    ok(conn.call({"cmd": "release", "id": back["id"], "worker_id": "w"}))
    assert ok(conn.call({"cmd": "get", "id": back["id"]}))["job"]["state"] == "waiting"
    pulled = ok(conn.call({"cmd": "pull", "queue": queue, "count": 10}))["jobs"]
    assert back["id"] in [j["id"] for j in pulled]  # beside the flow's first step
    acked = ok(conn.call({"cmd": "ack_batch", "items": [{"id": j["id"], "result": 2} for j in pulled]}))["results"]
    assert [r["ok"] for r in acked] == [True] * len(pulled)
    hook = ok(conn.call({"cmd": "webhook_create", "url": "https://hooks.example.com/t", "events": ["job_dlq"]}))
    assert ok(conn.call({"cmd": "webhook_get", "id": hook["id"]}))["webhook"] == hook["webhook"]
    assert hook["webhook"] in ok(conn.call({"cmd": "webhook_list"}))["webhooks"]
    ok(conn.call({"cmd": "webhook_delete", "id": hook["id"]}))
    name = f"every-{uuid.uuid4().hex[:8]}"
    ok(conn.call({"cmd": "schedule_create", "name": name, "queue": queue, "job_name": "j", "cron_expr": "0 3 1 1 *"}))
    assert ok(conn.call({"cmd": "schedule_get", "name": name}))["schedule"]["cron_expr"] == "0 3 1 1 *"
    assert name in [s["name"] for s in ok(conn.call({"cmd": "schedule_list"}))["schedules"]]
    for cmd in ("schedule_pause", "schedule_resume", "schedule_delete"):
        ok(conn.call({"cmd": cmd, "name": name}))
    ok(conn.call({"cmd": "auth", "token": "anything"}))  # auth is off: the handshake is a no-op
    assert conn.sent == {*commands.COMMANDS, "auth"}, {*commands.COMMANDS, "auth"} ^ conn.sent


def test_schedule_commands_and_a_fired_job_arrives(conn: Line, queue: str) -> None:
    """RustQueue's schedule commands; the server's maintenance sweep fires the schedule and a
    long-poll pull receives its job."""
    name = f"s-{uuid.uuid4().hex[:8]}"
    created = ok(conn.call({"cmd": "schedule_create", "name": name, "queue": queue, "job_name": "tick",
                            "job_data": {"from": "schedule"}, "job_options": {"priority": 4}, "every_ms": 3_600_000}))  # fmt: skip
    assert created["schedule"]["every_ms"] == 3_600_000 and created["schedule"]["execution_count"] == 0
    err(conn.call({"cmd": "schedule_create", "name": name, "queue": queue, "job_name": "x", "every_ms": 5}),
        "DUPLICATE_KEY")  # fmt: skip
    refused = err(conn.call({"cmd": "schedule_create", "name": "c", "queue": queue, "job_name": "x", "cron_expr": "* *"}),
                  "VALIDATION_ERROR")  # fmt: skip
    assert refused["details"]["field"] == "cron_expr"
    job = ok(conn.call({"cmd": "pull", "queue": queue, "wait_ms": 30_000}))["job"]  # fired at once
    assert (job["name"], job["data"], job["priority"]) == ("tick", {"from": "schedule"}, 4)
    fired = ok(conn.call({"cmd": "schedule_get", "name": name}))["schedule"]
    assert fired["execution_count"] == 1 and fired["last_run_at"] is not None
    ok(conn.call({"cmd": "schedule_pause", "name": name}))
    assert [s["paused"] for s in ok(conn.call({"cmd": "schedule_list"}))["schedules"] if s["name"] == name] == [True]
    ok(conn.call({"cmd": "schedule_resume", "name": name}))
    ok(conn.call({"cmd": "schedule_delete", "name": name}))
    for cmd in ("schedule_get", "schedule_delete", "schedule_pause", "schedule_resume"):
        assert err(conn.call({"cmd": cmd, "name": name}), "SCHEDULE_NOT_FOUND")["details"]["name"] == name


def test_pipelining_a_thousand_requests_before_reading(conn: Line, queue: str) -> None:
    conn.send(*[{"cmd": "push", "queue": queue, "name": "p", "data": i} for i in range(1000)])
    ids = [ok(conn.reply())["id"] for _ in range(1000)]
    assert len(set(ids)) == 1000 and ids == sorted(ids)  # answered in order (UUIDv7 ids grow)
    conn.send(*[{"cmd": "pull", "queue": queue, "count": 10} for _ in range(100)], {"cmd": "stats", "queue": queue})
    pulled = [job["data"] for _ in range(100) for job in ok(conn.reply())["jobs"]]
    assert pulled == list(range(1000))
    assert ok(conn.reply())["counts"]["active"] == 1000


def test_null_options_are_no_options_as_rustqueue_reads_them(conn: Line, queue: str) -> None:
    """serde clients send ``"options": null`` for an unset option: no options, flat ones still apply."""
    ids = [
        ok(conn.call({"cmd": "push", "queue": queue, "name": "bare", "options": None}))["id"],
        ok(conn.call({"cmd": "push", "queue": queue, "name": "flat", "priority": 4, "options": None}))["id"],
        ok(conn.call({"cmd": "push", "queue": queue, "name": "naïve", "data": [1], "options": None}))["id"],
    ]
    ids += ok(conn.call({"cmd": "push_batch", "queue": queue, "jobs": [
        {"name": "b1", "options": None}, {"name": "b2", "max_attempts": 7, "options": None}]}))["ids"]  # fmt: skip
    jobs = [ok(conn.call({"cmd": "get", "id": job_id}))["job"] for job_id in ids]
    assert [(j["name"], j["priority"], j["max_attempts"]) for j in jobs] == [
        ("bare", 0, 3), ("flat", 4, 3), ("naïve", 0, 3), ("b1", 0, 3), ("b2", 0, 7)]  # fmt: skip
    refused = err(conn.call({"cmd": "push", "queue": queue, "name": "x", "options": 5}), "VALIDATION_ERROR")
    assert refused["details"]["field"] == "options"


def test_ack_batch_partial_failures(conn: Line, queue: str) -> None:
    ids = ok(conn.call({"cmd": "push_batch", "queue": queue, "jobs": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}))[
        "ids"
    ]
    ok(conn.call({"cmd": "pull", "queue": queue, "count": 2}))
    items = [
        {"id": ids[0], "result": 1},
        {"id": ids[2]},
        {"id": str(uuid.uuid4())},
        {"id": "nope"},
        {"id": ids[1]},
        {"id": ids[0]},
    ]
    results = ok(conn.call({"cmd": "ack_batch", "items": items}))["results"]
    assert [r["ok"] for r in results] == [True, False, False, False, True, False]
    assert [r["error"]["code"] for r in results if not r["ok"]] == [
        "INVALID_STATE",
        "JOB_NOT_FOUND",
        "VALIDATION_ERROR",
        "INVALID_STATE",
    ]


def test_garbage_gets_errors_and_the_connection_stays_usable(conn: Line, queue: str) -> None:
    conn.send(b"not json\n", b"\x00\xff\xfe\x80garbage\n", b"[1, 2]\n", b'{"cmd": "explode"}\n', b'{"queue": "q"}\n',
              b'{"cmd": "push", "queue": "' + queue.encode() + b'", "name": "x", "data": NaN}\n',
              b'{"cmd": "push", "queue": "' + queue.encode() + b'", "name": "x", "colour": 1}\n', b"\n", b" \r\n",
              '{"cmd": "queues"}'.encode("utf-16") + b"\n", b'{"cmd": "push", "name": "x"}\n')  # fmt: skip
    assert err(conn.reply(), "PARSE_ERROR")["message"].startswith("line is not valid JSON")
    err(conn.reply(), "PARSE_ERROR")
    assert "JSON object" in err(conn.reply(), "PARSE_ERROR")["message"]
    assert "'explode'" in err(conn.reply(), "UNKNOWN_COMMAND")["message"]
    assert err(conn.reply(), "VALIDATION_ERROR")["details"]["field"] == "cmd"
    err(conn.reply(), "PARSE_ERROR")
    assert err(conn.reply(), "VALIDATION_ERROR")["details"]["field"] == "colour"
    assert "empty line" in err(conn.reply(), "PARSE_ERROR")["message"]  # as RustQueue answers one
    assert "empty line" in err(conn.reply(), "PARSE_ERROR")["message"]
    assert "send UTF-8" in err(conn.reply(), "PARSE_ERROR")["message"]  # not guessed, as json.loads would
    assert err(conn.reply(), "VALIDATION_ERROR")["details"]["field"] == "queue"  # was INTERNAL_ERROR
    assert ok(conn.call({"cmd": "stats", "queue": queue}))["counts"]["waiting"] == 0  # nothing stored, still usable


def test_over_deep_data_and_unencodable_text_get_errors_and_the_server_carries_on(conn: Line, queue: str) -> None:
    """Data nested past the limit is refused at push (it could be stored but never sent), and a
    reply that cannot be encoded (a lone surrogate echoed back) becomes an error reply."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    refused = err(conn.call({"cmd": "push", "queue": queue, "name": "x", "data": deep}), "VALIDATION_ERROR")
    assert refused["details"]["field"] == "data" and "200 levels" in refused["message"]
    refused = err(conn.call({"cmd": "push", "queue": queue, "name": "x", "metadata": {"m": deep}}), "VALIDATION_ERROR")
    assert refused["details"]["field"] == "options.metadata"
    conn.send(b'{"cmd": "\\ud800"}\n')
    assert err(conn.reply(), "UNKNOWN_COMMAND")["message"].startswith("unknown command")
    limit: Any = 1
    for _ in range(199):
        limit = [limit]
    job_id = ok(conn.call({"cmd": "push", "queue": queue, "name": "x", "data": limit}))["id"]
    assert ok(conn.call({"cmd": "pull", "queue": queue}))["job"]["data"] == limit
    ok(conn.call({"cmd": "ack", "id": job_id, "result": limit}))
    assert ok(conn.call({"cmd": "get", "id": job_id}))["job"]["result"] == limit
    assert ok(conn.call({"cmd": "stats", "queue": queue}))["counts"]["completed"] == 1


def test_an_oversize_line_is_refused_unbuffered_then_closed(tcp_server: Served, queue: str) -> None:
    line = Line(tcp_server)
    try:
        line.send(b'{"cmd": "push", "queue": "' + queue.encode() + b'", "name": "x", "data": "')
        line.send(b"x" * 65536, b"x" * 65536)  # twice the limit, and never a newline
        error = err(line.reply(), "VALIDATION_ERROR")
        assert error["details"] == {"field": "line", "limit": 65536}
        assert line.closed()
    finally:
        line.close()
    other = Line(tcp_server)
    assert ok(other.call({"cmd": "stats", "queue": queue}))["counts"]["waiting"] == 0
    other.close()


def test_two_hundred_concurrent_connections(tcp_server: Served, queue: str) -> None:
    conns = [Line(tcp_server) for _ in range(200)]
    try:
        for i, c in enumerate(conns):  # every connection has a request in flight at once
            c.send({"cmd": "push", "queue": queue, "name": "c", "data": i})
        ids = [ok(c.reply())["id"] for c in conns]
        results: list[Any] = []

        def work(c: Line) -> None:
            job = ok(c.call({"cmd": "pull", "queue": queue, "wait_ms": 10_000}))["job"]
            results.append(ok(c.call({"cmd": "ack", "id": job["id"], "result": job["data"]})))

        threads = [threading.Thread(target=work, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 200 and len(set(ids)) == 200
        assert ok(conns[0].call({"cmd": "stats", "queue": queue}))["counts"]["completed"] == 200
    finally:
        for c in conns:
            c.close()


def test_auth_required_accepted_refused(tmp_path: Path) -> None:
    served = serve(f"sqlite:///{tmp_path / 'auth.db'}", "--auth-token", "s3cret")
    try:
        anonymous = Line(served)
        assert "auth required" in err(anonymous.call({"cmd": "stats", "queue": "q"}), "UNAUTHORIZED")["message"]
        err(anonymous.call({"cmd": "auth", "token": "wrong"}), "UNAUTHORIZED")
        err(anonymous.call({"cmd": "auth"}), "UNAUTHORIZED")
        err(anonymous.call({"cmd": "push", "queue": "q", "name": "x"}), "UNAUTHORIZED")
        ok(anonymous.call({"cmd": "auth", "token": "s3cret"}))
        ok(anonymous.call({"cmd": "push", "queue": "q", "name": "x"}))
        assert ok(anonymous.call({"cmd": "stats", "queue": "q"}))["counts"]["waiting"] == 1
        anonymous.close()
    finally:
        assert served.stop() == 0, served.output


def test_idle_and_slow_clients_are_disconnected(tmp_path: Path) -> None:
    served = serve(f"sqlite:///{tmp_path / 'idle.db'}",
                   env={"CONVEYOR_TCP_IDLE_TIMEOUT_S": "1", "CONVEYOR_TCP_REQUEST_TIMEOUT_S": "1"})  # fmt: skip
    try:
        idle = Line(served)
        ok(idle.call({"cmd": "queues"}))
        assert idle.closed()  # nothing more sent: closed after the idle timeout
        slow = Line(served)
        slow.send(b'{"cmd": "que')  # a line begun and never finished
        assert slow.closed()
        busy = Line(served)
        for _ in range(3):  # a client that keeps talking is never idle
            ok(busy.call({"cmd": "queues"}))
            time.sleep(0.5)
        busy.close()
    finally:
        assert served.stop() == 0, served.output


def test_shutdown_answers_a_long_poll_in_flight(tmp_path: Path) -> None:
    served = serve(f"sqlite:///{tmp_path / 'stop.db'}")
    waiting = Line(served)
    waiting.send({"cmd": "pull", "queue": "empty", "wait_ms": 120_000})
    time.sleep(1)  # let the request reach the server
    assert served.stop() == 0, served.output
    assert waiting.reply() == {"ok": True, "job": None}
    assert waiting.closed()
    waiting.close()
