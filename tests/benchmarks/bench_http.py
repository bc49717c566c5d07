"""HTTP end to end: a real ``conveyor serve`` process, 16 concurrent keep-alive clients.

Not part of the test run. Numbers go to tests/benchmarks/RESULTS.md.

    .venv/bin/python tests/benchmarks/bench_http.py [--jobs N] [--clients 16] [--storage URL]

Single-op phases send one job per request: push, then pull, then ack (each phase n requests),
and a mixed phase where every client loops push -> pull -> ack. Batched phases push arrays of
100, pull ``count=100`` and ack-batch 100. The client is a minimal HTTP/1.1 keep-alive client
on asyncio streams (like wrk), so the client's own cost stays small next to the server's on
this 2-core machine; the server is the same process operators run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

PG_URL = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


class Connection:
    """One keep-alive HTTP/1.1 connection sending JSON and reading JSON replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(payload)}\r\n"
        if payload:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        reply = json.loads(await self.reader.readexactly(length))
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> {status} {reply}")
        return reply

    async def close(self) -> None:
        self.writer.close()


BARE_ASGI = """
import socket, sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
sock = socket.create_server(("127.0.0.1", 0))
print("http listening on http://127.0.0.1:%d" % sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, loop="uvloop")).run(sockets=[sock])
"""


def start_server(storage: str | None) -> tuple[subprocess.Popen[str], str, int]:
    """``conveyor serve`` on ``storage``; with None, a bare uvicorn app (the machine's floor)."""
    command = ["-c", BARE_ASGI] if storage is None else ["-m", "conveyor", "serve", "--storage", storage,
                                                         "--http-port", "0", "--tcp-port", "0"]  # fmt: skip
    # Benchmarks pull everything before acking it: on a slow disk that can outlast the 30 s
    # stall timeout, and the maintenance loop would hand the jobs back mid-run.
    env = {"CONVEYOR_STALL_TIMEOUT_MS": "3600000", **os.environ}
    proc = subprocess.Popen(
        [sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.search(r"http listening on http://([\d.]+):(\d+)", line):
            return proc, match.group(1), int(match.group(2))
    raise SystemExit(f"server did not start (exit {proc.wait()})")


async def baseline(clients: int) -> None:
    proc, host, port = start_server(None)
    try:
        conns = [await Connection.open(host, port) for _ in range(clients)]
        rate = await phase(conns, 8000, lambda c, i: c.request("GET", "/"))
        print(f"  base | bare uvicorn ASGI app       {rate:>9,.0f} req/s  (the machine's floor for this client)")
        for conn in conns:
            await conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


async def phase(conns: list[Connection], total: int, op: Any) -> float:
    """Run ``op(conn, i)`` ``total`` times spread over the connections; requests per second."""
    per = total // len(conns)

    async def client(k: int, conn: Connection) -> None:
        for i in range(per):
            await op(conn, k * per + i)

    start = time.perf_counter()
    await asyncio.gather(*(client(k, c) for k, c in enumerate(conns)))
    return per * len(conns) / (time.perf_counter() - start)


async def run(storage: str, jobs: int, clients: int) -> None:
    await baseline(clients)
    proc, host, port = start_server(storage)
    try:
        conns = [await Connection.open(host, port) for _ in range(clients)]
        ids: list[str] = []

        async def push(conn: Connection, i: int) -> None:
            ids.append(
                (await conn.request("POST", "/api/v1/queues/single/jobs", {"name": "job", "data": {"i": i}}))["id"]
            )

        pulled: list[str] = []

        async def pull(conn: Connection, i: int) -> None:
            pulled.append((await conn.request("GET", "/api/v1/queues/single/jobs"))["job"]["id"])

        async def ack(conn: Connection, i: int) -> None:
            await conn.request("POST", f"/api/v1/jobs/{pulled[i]}/ack", {"result": i})

        async def cycle(conn: Connection, i: int) -> None:
            await conn.request("POST", "/api/v1/queues/mixed/jobs", {"name": "job", "data": i})
            job = (await conn.request("GET", "/api/v1/queues/mixed/jobs"))["job"]
            await conn.request("POST", f"/api/v1/jobs/{job['id']}/ack", {"result": i})

        await phase(conns, clients * 20, lambda c, i: c.request("GET", "/health"))  # warm up
        rates = {name: await phase(conns, jobs, op) for name, op in (("push", push), ("pull", pull), ("ack", ack))}
        single = 3 / sum(1 / rate for rate in rates.values())
        for name, rate in rates.items():
            print(f"  http | {name:<28} {rate:>9,.0f} req/s  ({clients} clients, 1 job per request)")
        print(f"  http | push+pull+ack, phases       {single:>9,.0f} req/s  (all single-op round trips)")
        mixed = await phase(conns, jobs // 3, cycle) * 3
        print(f"  http | push->pull->ack per client  {mixed:>9,.0f} req/s")

        batch = 100

        async def push_batch(conn: Connection, i: int) -> None:
            await conn.request(
                "POST", "/api/v1/queues/batch/jobs", [{"name": "job", "data": i * batch + j} for j in range(batch)]
            )

        async def drain(conn: Connection, i: int) -> None:
            got = (await conn.request("GET", f"/api/v1/queues/batch/jobs?count={batch}"))["jobs"]
            if got:
                await conn.request("POST", "/api/v1/jobs/ack-batch", [{"id": job["id"], "result": None} for job in got])

        requests = max(clients, jobs // batch)
        pushed = await phase(conns, requests, push_batch) * batch
        drained = await phase(conns, requests, drain) * batch
        print(f"  http | batch push ({batch})              {pushed:>9,.0f} jobs/s")
        print(f"  http | drain (pull {batch} + ack-batch)  {drained:>9,.0f} jobs/s")
        for conn in conns:
            await conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--storage", help="storage URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or f"sqlite:///{tmp}/bench.db"
        print(f"storage: {storage}")
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(run(storage, args.jobs, args.clients))


if __name__ == "__main__":
    main()
