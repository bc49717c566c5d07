"""Durable SQLite commits without blocking the loop or taking the GIL: a helper process syncs the WAL.

With ``synchronous=FULL`` SQLite fsyncs the WAL inside every COMMIT. Done on the loop thread, that
blocks every connection for the disk's time; done on a thread, the thread needs the GIL back after
each fsync, and taking it from a busy loop stalls that loop for milliseconds (measured in
tests/benchmarks/RESULTS.md). So the connection runs at ``NORMAL`` (a COMMIT writes its WAL frames
and returns) and this module's helper process fsyncs the WAL file; a call is answered only after
an fsync that began after its COMMIT has returned. That is the durability ``FULL`` gives in WAL
mode, which is exactly "fsync the WAL after each commit" (on Unix SQLite pads nothing: files there
are powersafe-overwrite); ``NORMAL`` already syncs the WAL before each checkpoint and the database
after it. The loop serves connections while the disk syncs; the calls that arrive meanwhile form
the next group (`grouping`), and one fsync covers every commit before it.

The helper is a small Python process talking over pipes (one request line per commit that must be
durable; one reply line per fsync, naming the newest request it covers). It opens the WAL by path
(SQLite deletes that file only when the last connection closes, and ours stays open), fsyncs its
directory the first time it sees the file (as SQLite does for a new WAL), and reopens it if it was
replaced. A failed fsync fails the waiting calls, and every later sync: after a write error the
kernel may have dropped the data, so nothing written since can be promised. A helper that dies
fails the calls waiting on it; the next group that writes starts a new one first (or, if none
starts, syncs in its COMMIT from then on). A call told its sync failed was committed all the
same: its outcome is unknown to it, as after a lost connection (SQLite's own ``FULL`` would not
publish such a commit).

Another process sharing the file sees a commit before its fsync has finished (SQLite's ``FULL``
syncs before publishing): a power loss can then undo a job that process already claimed. Within
this process nothing runs before the commits before it are on disk (`SqliteStorage._commit_group`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

from conveyor.errors import StorageError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
"""How long the helper may take to start (an interpreter start: ~50 ms here, more on a loaded host)."""

_HELPER = r"""
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when to stop: it closes our stdin
wal = sys.argv[1]
sync = getattr(os, "fdatasync", os.fsync)
fd, seen, pending = None, None, b""
os.write(1, b"ready\n")
while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    pending += chunk
    *requests, pending = pending.split(b"\n")
    if not requests:
        continue
    newest = requests[-1]  # requests are numbered in order: one fsync covers them all
    try:
        now = os.stat(wal)
        if fd is None or (now.st_dev, now.st_ino) != seen:
            if fd is not None:
                os.close(fd)
            fd = os.open(wal, os.O_RDWR)
            seen = (now.st_dev, now.st_ino)
            try:  # the WAL's directory entry, as SQLite syncs it for a new WAL (and, as SQLite
                # does, ignoring file systems that cannot sync a directory)
                folder = os.open(os.path.dirname(wal) or ".", os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
            except OSError:
                pass
        sync(fd)
        reply = newest + b" ok\n"
    except OSError as exc:
        reply = newest + b" error " + repr(exc).encode("ascii", "replace").replace(b"\n", b" ") + b"\n"
    os.write(1, reply)
"""


class WalSyncer:
    """Makes the commits of one SQLite connection durable, in order, off the loop."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requested = 0
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._replies = b""
        self._ready: asyncio.Future[None] | None = None
        self.failed: str | None = None
        """Why syncs are refused for good (an fsync reported an error), or None."""

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> bool:
        """Start the helper (unless it runs) and wait until it does; False if it cannot: where
        ``sys.executable`` is not a Python that runs ``-c`` (some embedding hosts), or the loop
        cannot watch a pipe (Windows' default loop)."""
        if self._process is not None and self._process.poll() is None:
            return True
        self._stop("it stopped")
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _HELPER, str(self.wal)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,  # a Ctrl-C at the terminal must not stop it before the server drains
            )
            self._process, self._loop = process, loop
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            loop.add_reader(process.stdout.fileno(), self._read)
            await asyncio.wait_for(self._ready, timeout_s)
        except Exception as exc:  # noqa: BLE001 - whatever stops it, the caller syncs another way
            self._stop(f"it did not start: {exc!r}")
            log.warning("the WAL sync helper for %s did not start: %r", self.wal, exc)
            return False
        return True

    async def settled(self) -> None:
        """Wait until every sync asked for has finished (successfully or not)."""
        if self._waiting:
            await asyncio.wait(list(self._waiting.values()))

    def request(self) -> asyncio.Future[None]:
        """A future that completes once everything committed so far is on disk (or fails
        with `StorageError`). Call it right after a COMMIT returns, the helper `start`ed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failed is not None:
            done.set_exception(StorageError(self.failed))
            return done
        try:
            if self._process is None or self._process.stdin is None:
                raise BrokenPipeError("the helper is not running")
            self._requested += 1
            os.write(self._process.stdin.fileno(), b"%d\n" % self._requested)
        except OSError as exc:  # it died since `start`: the next group starts another
            self._stop(f"the WAL sync helper is not running ({exc!r})")
            done.set_exception(StorageError(f"could not make the commit durable: {exc!r}"))
            return done
        self._waiting[self._requested] = done
        return done

    async def close(self) -> None:
        """Wait for the syncs asked for, then stop the helper."""
        await self.settled()
        self._stop("the storage is closed")

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        try:
            chunk = os.read(process.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk, error = b"", repr(exc)
        else:
            error = "it exited"
        if not chunk:
            self._stop(f"the WAL sync helper stopped: {error}")
            return
        self._replies += chunk
        *lines, self._replies = self._replies.split(b"\n")
        for line in lines:
            number, _, outcome = line.partition(b" ")
            if number == b"ready":
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
            elif not number.isdigit():  # not our helper's words: whatever it synced is unknown
                self._stop(f"the WAL sync helper wrote {line[:100]!r}")
                return
            elif outcome == b"ok":
                self._settle(int(number), None)
            else:
                self.failed = (
                    f"fsync of {self.wal} failed: {outcome.removeprefix(b'error ').decode('ascii', 'replace')}"
                )
                log.error("%s; this storage accepts no more writes until it is reopened", self.failed)
                self._settle(int(number), StorageError(self.failed))
                self._stop(self.failed)
                return

    def _settle(self, newest: int, error: StorageError | None) -> None:
        """Complete every request up to ``newest``, oldest first (their callers answer in order)."""
        for number in [n for n in self._waiting if n <= newest]:  # numbered as they were added
            done = self._waiting.pop(number)
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    def _stop(self, why: str) -> None:
        """Stop the helper; requests still waiting fail (whether their commit reached the disk
        is unknown). The next `start` starts a new helper."""
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None and process.stdout is not None
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(process.stdout.fileno())
            process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
        self._replies = b""  # a line the old helper left half written is not the new one's
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(StorageError(f"the WAL sync helper did not start: {why}"))
        self._settle(self._requested, StorageError(f"could not make the commit durable: {why}"))
