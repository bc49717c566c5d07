"""Real ``conveyor serve`` processes on free ports, for the end-to-end tests.

Each server is started with ``--http-port 0 --tcp-port 0`` and the test reads the address
it logs, so ports are never guessed (no race with other processes). Stopping sends SIGTERM
and requires a clean exit (status 0) within the timeout.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

LISTENING = re.compile(r"(\w+) listening on (\S+)")


class Served:
    """One ``conveyor serve`` child process and what it printed."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, nofile: int | None = None
    ) -> None:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        child_env.update(env or {})
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env, cwd=cwd,
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
        )  # fmt: skip
        self.lines: list[str] = []
        self.addresses: dict[str, str] = {}
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if match := LISTENING.search(line):
                self.addresses[match.group(1)] = match.group(2)
                if {"http", "tcp"} <= self.addresses.keys():
                    self._listening.set()
        self._listening.set()  # the process ended

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_listening(self, timeout: float = 60) -> str:
        self._listening.wait(timeout)
        if not {"http", "tcp"} <= self.addresses.keys():
            self.proc.kill()
            raise AssertionError(f"conveyor serve {' '.join(self.args)} did not listen:\n{self.output}")
        return self.addresses["http"]

    @property
    def url(self) -> str:
        return self.wait_listening()

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", timeout=60, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"conveyor serve did not stop within {timeout}s:\n{self.output}") from None
        self._reader.join(10)
        return self.proc.returncode


def serve(
    storage: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, nofile: int | None = None
) -> Served:
    """Start ``conveyor serve`` on ``storage`` with free ports and wait until it listens
    (``nofile``: the limit on its open files, soft and hard)."""
    served = Served(
        ["--storage", storage, "--http-port", "0", "--tcp-port", "0", *args], env=env, cwd=cwd, nofile=nofile
    )
    served.wait_listening()
    return served


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server on a SQLite file shared by a module's tests (each uses its own queues)."""
    path = tmp_path_factory.mktemp("serve") / "conveyor.db"
    served = serve(f"sqlite:///{path}")
    yield served
    assert served.stop() == 0, served.output


@pytest.fixture
def http(sqlite_server: Served) -> Iterator[httpx.Client]:
    with sqlite_server.client() as client:
        yield client


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    """A queue name of this test's own."""
    return re.sub(r"[^A-Za-z0-9._:-]", "-", request.node.name)[:200]
