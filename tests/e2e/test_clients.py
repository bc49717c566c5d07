"""`conveyor.connect` clients against real servers: pipelining, reconnect, timeouts, auth,
the blocking form, and errors rebuilt as the kernel's exception classes."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import conveyor
from conveyor import (
    ClientConnectionError,
    InvalidStateError,
    LimitExceededError,
    UnauthorizedError,
    ValidationError,
    WebhookNotFoundError,
)

from .conftest import serve

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    served = serve(f"sqlite:///{tmp_path_factory.mktemp('clients') / 'c.db'}", "--auth-token", "k")
    yield served
    assert served.stop() == 0, served.output


async def test_one_tcp_connection_pipelines_concurrent_calls(server: Any) -> None:
    async with conveyor.connect(server.addresses["tcp"], token="k") as q:
        ids: list[Any] = []

        async def push(i: int) -> None:
            ids.append((i, await q.push("pipe", "p", i)))

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(push, i)
        assert len({job_id for _, job_id in ids}) == 500
        jobs = await q.pull("pipe", 1000)
        assert sorted(job.data for job in jobs) == list(range(500))
        results = await q.ack_batch([{"id": job.id} for job in jobs])
        assert all(r.ok for r in results)


@pytest.mark.parametrize("transport", ["http", "tcp"])
async def test_errors_are_the_kernel_classes(server: Any, transport: str) -> None:
    async with conveyor.connect(server.addresses[transport], token="k") as q:
        job_id = await q.push("errs", "e")
        with pytest.raises(InvalidStateError):
            await q.ack(job_id)
        with pytest.raises(LimitExceededError) as err:
            await q.push("errs", "big", "x" * (1024 * 1024 + 1))
        assert err.value.field == "data"
        assert await q.get("00000000-0000-7000-8000-000000000000") is None
    async with conveyor.connect(server.addresses[transport], token="wrong") as q:
        with pytest.raises(UnauthorizedError):
            await q.queues()


@pytest.mark.parametrize("transport", ["http", "tcp"])
async def test_webhook_registrations_through_the_client(server: Any, transport: str) -> None:
    async with conveyor.connect(server.addresses[transport], token="k") as q:
        hook = await q.add_webhook(
            {"url": f"https://hooks.example.com/{transport}", "events": ["job_dlq"], "secret": "s"}
        )
        assert hook.events == ["job.dlq"] and hook.has_secret and not hasattr(hook, "secret")
        assert await q.get_webhook(hook.id) == hook
        assert hook in await q.webhooks()
        await q.remove_webhook(hook.id)
        with pytest.raises(WebhookNotFoundError):
            await q.get_webhook(hook.id)
        with pytest.raises(WebhookNotFoundError):
            await q.remove_webhook(hook.id)
        with pytest.raises(ValidationError) as err:
            await q.add_webhook({"url": "ftp://hooks.example.com/"})
        assert err.value.field == "url"


async def test_unreachable_and_silent_servers_fail_fast_and_clearly() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    for url in (f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{port}"):
        async with conveyor.connect(url, timeout_s=5) as q:
            with pytest.raises(ClientConnectionError):
                await q.queues()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        async with conveyor.connect(address, timeout_s=0.5) as q:
            with pytest.raises(ClientConnectionError, match="no reply"):
                await q.queues()
        async with conveyor.connect(address, token="k", timeout_s=0.5) as q:  # the timeout hits the auth
            with pytest.raises(ClientConnectionError, match="no reply"):  # was a bare AssertionError
                await q.queues()


@pytest.mark.parametrize("transport", ["http", "tcp"])
async def test_a_long_poll_does_not_hold_up_other_calls_of_the_client(server: Any, transport: str) -> None:
    """The server answers one connection's requests in order, so the TCP client gives each
    long-poll a connection of its own; other calls, and other long-polls, go on meanwhile."""
    async with conveyor.connect(server.addresses[transport], token="k") as q:
        got: dict[str, list[Any]] = {}

        async def consume(queue: str) -> None:
            got[queue] = await q.pull(queue, wait_ms=30_000)

        async with anyio.create_task_group() as tg:
            for queue in ("lp-a", "lp-b", "lp-c"):
                tg.start_soon(consume, queue)
            await anyio.sleep(0.2)  # the pulls are waiting (if not, they find the job at once: fine too)
            assert (await q.stats("lp-c")).waiting == 0
            job_id = await q.push("lp-c", "wake")  # would wait 30 s behind the pulls on one connection
            await q.push("lp-a", "wake-a")
            await q.push("lp-b", "wake-b")
        assert [job.id for job in got["lp-c"]] == [job_id]
        assert [job.name for job in got["lp-a"]] == ["wake-a"] and [job.name for job in got["lp-b"]] == ["wake-b"]


async def test_the_tcp_client_carries_on_after_the_server_refuses_an_oversize_line(server: Any) -> None:
    async with conveyor.connect(server.addresses["tcp"], token="k") as q:
        with pytest.raises(LimitExceededError) as err:
            await q.push("big", "b", {"blob": "x" * (3 * 1024 * 1024)})  # over the 2 MiB line limit
        assert err.value.field == "line"
        assert (await q.stats("big")).waiting == 0  # on a new connection: the server closed the old one


@pytest.mark.parametrize("transport", ["http", "tcp"])
async def test_text_utf8_cannot_hold_is_refused_by_field(server: Any, transport: str) -> None:
    async with conveyor.connect(server.addresses[transport], token="k") as q:
        with pytest.raises(ValidationError) as err:
            await q.push("surrogates", "s", {"text": "\ud800"})  # a lone surrogate
        assert err.value.field == "data" and "lone surrogate" in err.value.message


@pytest.mark.parametrize("transport", ["http", "tcp"])
async def test_flow_ids_with_slashes_and_dots_reach_their_flow(server: Any, transport: str) -> None:
    async with conveyor.connect(server.addresses[transport], token="k") as q:
        for flow_id in (f"org/repo#{transport}", "..", f"a b/../{transport}?x=1"):
            job_id = await q.push(f"flows-{transport}", "step", options={"flow_id": flow_id})
            status = await q.flow(flow_id)
            assert job_id in [job.id for job in status.jobs], flow_id
        with pytest.raises(ValidationError) as err:
            await q.push("..", "dots")  # a queue name of only dots cannot be part of a URL
        assert err.value.field == "queue"


async def test_the_tcp_client_reconnects_after_a_server_restart(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'r.db'}"
    first = serve(db)
    port = first.addresses["tcp"].rsplit(":", 1)[1]
    async with conveyor.connect(first.addresses["tcp"]) as q:
        kept = await q.push("r", "before")
        assert first.stop() == 0
        with pytest.raises(ClientConnectionError):
            await q.queues()  # the connection it had is gone
        second = serve(db, "--tcp-port", port)  # later flag wins over the helper's --tcp-port 0
        try:
            job = await q.get(kept)  # a new connection, made by the call
            assert job is not None and job.name == "before"
        finally:
            assert second.stop() == 0, second.output


def test_the_blocking_client(server: Any) -> None:
    with conveyor.connect_sync(server.addresses["tcp"], token="k") as q:
        job_id = q.push("sync", "s", {"n": 1}, priority=2)
        [job] = q.pull("sync")
        assert job.id == job_id and job.data == {"n": 1}
        q.ack(job.id, "done")
        assert q.get(job_id).result == "done"
        assert q.stats("sync").completed == 1
        hook = q.add_webhook({"url": "https://hooks.example.com/sync"})
        assert q.get_webhook(hook.id).url == "https://hooks.example.com/sync"
        q.remove_webhook(hook.id)


def test_a_blocking_client_left_open_lets_the_program_exit(server: Any) -> None:
    script = (
        "import sys, conveyor\n"
        "q = conveyor.connect_sync(sys.argv[1], token='k').open()\n"
        "print(q.stats('sync-left-open').waiting)\n"
    )
    # the timeout only guards against the hang this test is about
    done = subprocess.run(
        [sys.executable, "-c", script, server.addresses["tcp"]], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "0\n"), done.stderr


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_calls_given_up_at_any_moment_never_get_another_calls_reply(server: Any) -> None:
    """A call cancelled between being queued and being written used to shift every later reply
    onto the call before it: ``get(a)`` answered with job b."""
    async with conveyor.connect(server.addresses["tcp"], token="k") as q:
        ids = await q.push_batch("shift", [{"name": f"j{i}", "data": i} for i in range(20)])
        wrong: list[tuple[int, int]] = []
        answered = 0

        async def get(i: int) -> None:
            nonlocal answered
            with anyio.move_on_after(random.random() * 0.03):
                job = await q.get(ids[i])
                answered += 1
                if job is None or job.data != i:
                    wrong.append((i, -1 if job is None else job.data))

        for _ in range(40):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(get, i)
        assert wrong == [] and answered > 0
        assert [job.data for job in [await q.get(job_id) for job_id in ids]] == list(range(20))


async def test_timeouts_and_refusals_leave_no_socket_behind(server: Any) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        before = open_fds()
        async with conveyor.connect(f"tcp://127.0.0.1:{silent.getsockname()[1]}", token="k", timeout_s=0.1) as q:
            for wait_ms in (0, 0, 0, 5, 5, 5):  # the auth times out on the main and on long-poll connections
                with pytest.raises(ClientConnectionError):
                    await q.pull("q", wait_ms=wait_ms)
        assert open_fds() == before
    async with conveyor.connect(server.addresses["tcp"], token="k") as q:
        await q.queues()
        before = open_fds()
        for _ in range(5):  # an error about a field named "line" is not the server closing the connection
            with pytest.raises(ValidationError):
                await q.push_job("lines", {"name": "x", "line": 1})
        assert open_fds() == before


async def test_closing_the_client_fails_a_long_poll_in_flight_at_once(server: Any) -> None:
    failed: list[BaseException] = []
    with anyio.fail_after(20):  # the pull would otherwise wait out its 60 s
        async with anyio.create_task_group() as tg:
            q = conveyor.connect(server.addresses["tcp"], token="k")
            await q.open()

            async def wait() -> None:
                try:
                    await q.pull("never", wait_ms=60_000)
                except ClientConnectionError as exc:
                    failed.append(exc)

            tg.start_soon(wait)
            await anyio.sleep(0.3)  # the pull is in flight (if not yet, it fails on a closed client)
            await q.close()
    assert len(failed) == 1 and "closed" in str(failed[0])


async def test_closing_the_client_fails_calls_still_authenticating_at_once() -> None:
    with socket.socket() as silent:  # accepts connections, never answers the auth
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        failed: list[BaseException] = []
        with anyio.fail_after(20):  # the calls would otherwise wait out their 30 s timeout
            async with anyio.create_task_group() as tg:
                q = conveyor.connect(f"tcp://127.0.0.1:{silent.getsockname()[1]}", token="k")
                await q.open()

                async def call(wait_ms: int) -> None:
                    try:
                        await q.pull("q", wait_ms=wait_ms)
                    except ClientConnectionError as exc:
                        failed.append(exc)

                tg.start_soon(call, 0)
                tg.start_soon(call, 5_000)
                await anyio.sleep(0.3)  # both are waiting for the auth's answer
                await q.close()
        assert len(failed) == 2


async def test_a_reply_too_deep_to_parse_fails_the_call_not_the_client() -> None:
    """A hostile or broken server answering with JSON nested past the parser's limit: the call
    fails with ClientConnectionError; the client's own task group (the caller's block) lives."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer_once() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"[" * 200_000 + b"]" * 200_000 + b"\n")
                conn.recv(65536)  # until the client closes

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        async with conveyor.connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout_s=10) as q:
            with pytest.raises(ClientConnectionError, match="not a reply"):
                await q.queues()
        thread.join(10)


async def test_long_poll_connections_are_reused_not_opened_per_call(server: Any) -> None:
    def sockets() -> set[str]:  # this process's sockets: a new connection is a new inode
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the directory listing's own fd, gone
                found.add(os.readlink(f"/proc/self/fd/{fd}"))
        return {link for link in found if link.startswith("socket:")}

    async with conveyor.connect(server.addresses["tcp"], token="k") as q:
        assert await q.pull("reuse", wait_ms=10) == []
        opened = sockets()
        for _ in range(5):
            assert await q.pull("reuse", wait_ms=10) == []
        assert sockets() == opened  # each long-poll took the spare connection the last one left


async def test_an_error_reply_with_malformed_details_is_still_the_error_it_names() -> None:
    """A server (RustQueue-compatible, or broken) whose error ``details`` is not an object: the
    call raises the ConveyorError its code names; the client and the caller's block live on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b'{"ok":false,"error":{"code":"VALIDATION_ERROR","message":"bad","details":"x"}}\n')
                conn.recv(65536)
                conn.sendall(b'{"ok":true,"queues":[]}\n')
                conn.recv(65536)  # until the client closes

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        async with conveyor.connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}", timeout_s=10) as q:
            with pytest.raises(ValidationError, match="bad") as refused:
                await q.push("q", "j")
            assert not refused.value.details and refused.value.field is None
            assert await q.queues() == []
        thread.join(10)


async def test_tcp_clients_open_and_close_in_any_order_and_task(server: Any) -> None:
    """No task group is held between calls: clients need not be closed in the reverse order
    they were opened, nor in the task that opened them."""
    first, second = (conveyor.connect(server.addresses["tcp"], token="k") for _ in range(2))
    await first.open()
    await second.open()
    assert isinstance(await first.push("order", "a"), type(await second.push("order", "b")))
    await first.close()  # the one opened first closes first
    assert (await second.stats("order")).waiting >= 2
    await second.close()
    third = conveyor.connect(server.addresses["tcp"], token="k")
    async with anyio.create_task_group() as tg:
        tg.start_soon(third.open)  # opened in another task, used and closed in this one
    await third.push("order", "c")
    await third.close()


async def test_a_tcp_connection_the_server_closed_while_idle_is_replaced_before_the_next_call(
    tmp_path: Path,
) -> None:
    """The server closes idle connections; the next call finds that out before writing, and
    goes out on a new connection instead of failing as "may have run"."""
    served = serve(f"sqlite:///{tmp_path / 'idle.db'}", env={"CONVEYOR_TCP_IDLE_TIMEOUT_S": "0.3"})
    try:
        async with conveyor.connect(served.addresses["tcp"]) as q:
            await q.push("idle", "j")
            held = open_fds()
            for _ in range(3):
                await anyio.sleep(1)  # past the idle timeout: the server closes the connection
                await q.push("idle", "j")
            assert (await q.stats("idle")).waiting == 4
            assert open_fds() == held  # each closed connection was let go, not just replaced
    finally:
        assert served.stop() == 0, served.output


def _wal_helper(served: Any) -> int:
    """The pid of the server's SQLite WAL sync helper (its only child process)."""
    pid = served.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.parametrize(("transport", "wait_ms"), [("tcp", 0), ("tcp", 60_000), ("http", 0), ("http", 60_000)])
async def test_a_pull_cancelled_while_the_server_claims_gives_the_job_back(
    tmp_path: Path, transport: str, wait_ms: int
) -> None:
    """The WAL helper is stopped, so the server's claim waits for an earlier push's fsync while
    the caller gives up. The job it claimed must not sit active for nobody: the client takes
    the reply anyway and releases it (TCP, HTTP), or the server gives it back when the client
    disconnects (an HTTP long-poll)."""
    import signal

    served = serve(f"sqlite:///{tmp_path / 'cancel.db'}")
    try:
        async with conveyor.connect(served.addresses[transport]) as q, conveyor.connect(served.addresses["tcp"]) as o:
            job_id = await q.push("c", "j", max_attempts=1)
            helper = _wal_helper(served)
            os.kill(helper, signal.SIGSTOP)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(o.push, "other", "held")  # committed, waiting for its fsync
                    await anyio.sleep(0.3)
                    pulled: list[Any] = []

                    async def resume_helper() -> None:
                        await anyio.sleep(1.5)  # after the pull below is given up
                        os.kill(helper, signal.SIGCONT)

                    tg.start_soon(resume_helper)
                    with anyio.move_on_after(0.8) as gave_up:
                        pulled.extend(await q.pull("c", worker_id="w", wait_ms=wait_ms))
                    assert gave_up.cancelled_caught and pulled == []
            finally:
                os.kill(helper, signal.SIGCONT)
            for _ in range(50):  # an HTTP long-poll's give-back is the server's, after the disconnect
                if (job := await o.get(job_id)) is not None and job.state == "waiting":
                    break
                await anyio.sleep(0.1)
            assert job is not None and (job.state, job.attempt, job.worker_id) == ("waiting", 0, None)
            assert [j.id for j in await o.pull("c")] == [job_id]
    finally:
        assert served.stop() == 0, served.output
