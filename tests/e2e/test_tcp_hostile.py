"""The TCP server against hostile and unlucky clients, on real ``conveyor serve`` processes:
shutdown with connections that sent nothing, more clients than file descriptors, clients that
never read their replies or trickle their requests, and replies that must not wait behind a
long-poll sent with them."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import Served, serve
from .test_tcp import Line, err, ok


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed(line: Line) -> bool:
    """True once the server has closed the connection (a reset counts)."""
    try:
        return line.file.readline() == b""
    except ConnectionResetError:
        return True


def raw_socket(served: Served, kind: str) -> socket.socket:
    address = urlsplit(served.addresses[kind])
    return socket.create_connection((address.hostname, address.port), timeout=30)


def test_shutdown_with_silent_and_half_sent_connections_exits_cleanly(tmp_path: Path) -> None:
    served = serve(f"sqlite:///{tmp_path / 'quiet.db'}")
    silent, half, talker = Line(served), Line(served), Line(served)
    half.send(b'{"cmd": "que')
    ok(talker.call({"cmd": "queues"}))  # accepted after the other two, so they are being served
    assert served.stop() == 0, served.output
    assert "Traceback" not in served.output, served.output
    assert closed(silent) and closed(half) and closed(talker)


def test_clients_beyond_the_open_file_limit_are_turned_away_and_the_server_lives(tmp_path: Path) -> None:
    """Under a limit of 64 open files the server keeps 32 for other uses (database, HTTP):
    the 33rd client is told RATE_LIMITED and closed, instead of the server dying on EMFILE."""
    served = serve(f"sqlite:///{tmp_path / 'fds.db'}", nofile=64)
    held: list[Line] = []
    try:
        for _ in range(32):
            held.append(Line(served))
            ok(held[-1].call({"cmd": "queues"}))
        refused = Line(served)
        error = err(refused.reply(), "RATE_LIMITED")
        assert error["details"]["limit"] == 32 and "too many connections" in error["message"]
        assert closed(refused)
        with served.client() as http:
            assert http.get("/queues").status_code == 200
        held.pop().close()
        for _ in range(100):  # the server notices the close when it reads the end of stream
            again = Line(served)
            again.send({"cmd": "queues"})
            reply = again.reply()
            if reply["ok"]:
                break
            err(reply, "RATE_LIMITED")
            again.close()
            time.sleep(0.05)
        else:
            raise AssertionError("a freed connection slot was never given to a new client")
        held.append(again)
    finally:
        for line in held:
            line.close()
        assert served.stop() == 0, served.output


def test_running_out_of_file_descriptors_is_waited_out(tmp_path: Path) -> None:
    """HTTP clients take every descriptor left; a TCP client then waits in the backlog while
    accept() fails with EMFILE, and is served once descriptors are free again."""
    served = serve(f"sqlite:///{tmp_path / 'emfile.db'}", nofile=64)
    pid = served.proc.pid
    hogs: list[socket.socket] = []
    try:
        for _ in range(64):
            hogs.append(raw_socket(served, "http"))
        for _ in range(600):  # until the server has used its last descriptor on them
            if open_fds(pid) >= 64:
                break
            time.sleep(0.05)
        assert open_fds(pid) >= 64
        waiting = Line(served)
        waiting.send({"cmd": "queues"})
        for _ in range(600):
            if "cannot accept a connection" in served.output:
                break
            time.sleep(0.05)
        assert "tcp: cannot accept a connection" in served.output, served.output
        for hog in hogs:
            hog.close()
        hogs.clear()
        ok(waiting.reply())
        waiting.close()
        assert served.proc.poll() is None
    finally:
        for hog in hogs:
            hog.close()
        assert served.stop() == 0, served.output


def test_a_reply_is_not_held_behind_a_long_poll_sent_with_it(tcp_server: Served) -> None:
    queue = f"hol-{time.time_ns()}"
    waiting, pusher = Line(tcp_server), Line(tcp_server)
    waiting.send({"cmd": "stats", "queue": queue}, {"cmd": "pull", "queue": queue, "wait_ms": 60_000})
    assert ok(waiting.reply())["counts"]["waiting"] == 0  # before the pull has anything to return
    job_id = ok(pusher.call({"cmd": "push", "queue": queue, "name": "late"}))["id"]
    assert ok(waiting.reply())["job"]["id"] == job_id
    waiting.close()
    pusher.close()


def test_a_client_that_never_reads_holds_little_server_memory(tcp_server: Served) -> None:
    """400 gets of a 500 KB job, written at once and never read: the server sends each reply as
    it is made and stops when the socket is full, instead of building 200 MB of replies."""
    queue = f"mem-{time.time_ns()}"
    line = Line(tcp_server)
    job_id = ok(line.call({"cmd": "push", "queue": queue, "name": "big", "data": "x" * 500_000}))["id"]
    before = rss_bytes(tcp_server.proc.pid)
    line.send(*[{"cmd": "get", "id": job_id}] * 400)
    assert ok(line.reply())["job"]["id"] == job_id  # the first reply is out
    time.sleep(2)  # the server goes on until the socket is full
    grown = rss_bytes(tcp_server.proc.pid) - before
    assert grown < 64 * 1024 * 1024, f"server memory grew by {grown / 1e6:.0f} MB"
    line.close()


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Served:
    served = serve(f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'tcp.db'}")
    yield served  # type: ignore[misc]
    assert served.stop() == 0, served.output


def test_a_client_trickling_a_line_is_cut_off_by_the_line_deadline(tmp_path: Path) -> None:
    """The request timeout runs from a line's first byte: bytes dripping in do not renew it."""
    served = serve(f"sqlite:///{tmp_path / 'drip.db'}", env={"CONVEYOR_TCP_REQUEST_TIMEOUT_S": "1"})
    try:
        for drip in (b'{"cmd": "queues"}\n', b" " * 40):
            line = Line(served)
            try:
                for byte in drip:
                    line.sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while dripping
            assert closed(line), f"{drip[:20]!r}: answered or still open after {len(drip) * 0.1:.1f} s"
            line.close()
    finally:
        assert served.stop() == 0, served.output


def test_a_client_that_stops_reading_is_cut_off_by_the_send_deadline(tmp_path: Path) -> None:
    """A reply the client does not take within the request timeout ends the connection (its
    socket stays full); the server goes on serving others."""
    served = serve(f"sqlite:///{tmp_path / 'stalled.db'}", env={"CONVEYOR_TCP_REQUEST_TIMEOUT_S": "1"})
    try:
        line = Line(served)
        job_id = ok(line.call({"cmd": "push", "queue": "q", "name": "big", "data": "x" * 500_000}))["id"]
        line.send(*[{"cmd": "get", "id": job_id}] * 400)  # 200 MB of replies, none read yet
        time.sleep(3)  # the send deadline passes while the socket is full
        received, replies = 0, 0
        while chunk := line.sock.recv(1 << 20):  # then the client reads: what was sent, then the end
            received += len(chunk)
            replies += chunk.count(b"\n")
        assert replies < 400 and received < 400 * 500_000, "every reply was sent: no deadline cut it"
        other = Line(served)
        assert ok(other.call({"cmd": "get", "id": job_id}))["job"]["name"] == "big"
        other.close()
        line.close()
    finally:
        assert served.stop() == 0, served.output


def test_a_last_request_without_its_newline_is_answered(tcp_server: Served) -> None:
    line = Line(tcp_server)  # as `printf '{"cmd": "queues"}' | nc host port` sends it
    line.sock.sendall(b'{"cmd": "queues"}')
    line.sock.shutdown(socket.SHUT_WR)
    assert "queues" in ok(line.reply())
    assert closed(line)
    line.close()


def test_repeated_wrong_tokens_close_the_connection(tmp_path: Path) -> None:
    served = serve(f"sqlite:///{tmp_path / 'guess.db'}", "--auth-token", "s3cret")
    try:
        guesser = Line(served)
        for guess in range(5):
            err(guesser.call({"cmd": "auth", "token": f"guess-{guess}"}), "UNAUTHORIZED")
        assert closed(guesser)
        err(Line(served).call({"cmd": "auth", "token": "\ud800"}), "UNAUTHORIZED")  # not INTERNAL_ERROR
        assert httpx.get(served.url + "/api/v1/queues", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        assert served.stop() == 0, served.output


def test_time_spent_on_a_long_poll_does_not_count_against_the_next_line(tmp_path: Path) -> None:
    """The next line's deadline starts when the server waits for it, not when its first bytes
    arrived behind a request that took longer than the deadline."""
    served = serve(f"sqlite:///{tmp_path / 'behind.db'}", env={"CONVEYOR_TCP_REQUEST_TIMEOUT_S": "1"})
    try:
        line = Line(served)
        line.send({"cmd": "pull", "queue": "none", "wait_ms": 1500}, b'{"cmd": "que')
        time.sleep(0.3)
        line.send(b'ues"}\n')
        assert ok(line.reply())["job"] is None
        assert "queues" in ok(line.reply())
        big = {"cmd": "push", "queue": "behind", "name": "big", "data": "x" * 100_000}
        line.send({"cmd": "pull", "queue": "none", "wait_ms": 1500}, big)  # the push line spans reads
        assert ok(line.reply())["job"] is None
        assert ok(line.reply())["id"]
        line.close()
    finally:
        assert served.stop() == 0, served.output


def test_a_flood_of_clients_over_the_limit_cannot_starve_http(tmp_path: Path) -> None:
    """Clients over tcp_max_connections are told so a few at a time; the rest are closed at
    once, so they cannot hold the descriptors HTTP and the database need."""
    served = serve(f"sqlite:///{tmp_path / 'flood.db'}", env={"CONVEYOR_TCP_MAX_CONNECTIONS": "2"}, nofile=64)
    flood: list[socket.socket] = []
    try:
        for _ in range(200):
            flood.append(raw_socket(served, "tcp"))  # never closed by the client while HTTP is asked
        with served.client() as http:
            for _ in range(5):
                assert http.get("/queues").status_code == 200
    finally:
        for sock in flood:
            sock.close()
        assert served.stop() == 0, served.output


def test_text_that_is_not_utf8_or_not_printable_gets_clear_errors(tcp_server: Served) -> None:
    line = Line(tcp_server)
    line.send(b'{"cmd": "queues", "x\\ud800": 1}\n')  # an unknown field whose name holds a lone surrogate
    refused = err(line.reply(), "VALIDATION_ERROR")
    assert refused["details"]["field"] == "x\\ud800" and "unknown field" in refused["message"]
    line.send(b'{"cmd": "queues", "x": "\xed\xa0\x80"}\n', b'\xef\xbb\xbf{"cmd": "queues"}\n')  # CESU-8, a BOM
    assert "not valid JSON" in err(line.reply(), "PARSE_ERROR")["message"]
    assert "not valid JSON" in err(line.reply(), "PARSE_ERROR")["message"]
    assert "queues" in ok(line.call({"cmd": "queues"}))
    line.close()
    assert "Traceback" not in tcp_server.output


def test_a_long_poll_whose_client_left_claims_nothing(tcp_server: Served) -> None:
    """A client that closes while its pull waits must not have a job claimed for it: the job
    would sit active until the stall timeout, then lose an attempt (and with max_attempts=1 go
    to the DLQ without ever running)."""
    queue = f"left-{time.time_ns()}"
    gone = Line(tcp_server)
    gone.send({"cmd": "pull", "queue": queue, "wait_ms": 60_000, "worker_id": "gone"})
    half = Line(tcp_server)  # sends its pull, then says it will send nothing more
    half.send({"cmd": "pull", "queue": queue, "wait_ms": 60_000, "count": 5})
    half.sock.shutdown(socket.SHUT_WR)
    assert ok(half.reply())["jobs"] == []  # answered at once, with nothing pulled
    gone.close()
    time.sleep(0.5)  # the server reads the end of the closed connection's stream
    other = Line(tcp_server)
    job_id = ok(other.call({"cmd": "push", "queue": queue, "name": "j", "max_attempts": 1}))["id"]
    assert ok(other.call({"cmd": "pull", "queue": queue}))["job"]["id"] == job_id  # still there to pull
    other.close()
    half.close()


def test_a_long_poll_sent_then_half_closed_gets_the_waiting_job(tcp_server: Served) -> None:
    """As ``printf '{"cmd":"pull",...}' | nc`` does: the end of the stream ends the wait, not the
    claim that the pull makes first, so a job already waiting is answered, as without
    ``wait_ms``."""
    queue = f"half-{time.time_ns()}"
    other = Line(tcp_server)
    job_id = ok(other.call({"cmd": "push", "queue": queue, "name": "j"}))["id"]
    half = Line(tcp_server)
    half.send({"cmd": "pull", "queue": queue, "wait_ms": 60_000})
    half.sock.shutdown(socket.SHUT_WR)
    assert ok(half.reply())["job"]["id"] == job_id
    assert ok(other.call({"cmd": "stats", "queue": queue}))["counts"]["active"] == 1
    half.close()
    other.close()
