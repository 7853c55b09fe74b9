"""A cross-process gate around a file that only one process may open at a time (DuckDB).

DuckDB lets one process open a database file; a second one gets an error at once, and taking
turns by naive open/close lost acknowledged rows here (see FACTS.md: an opener reads the file
before it takes DuckDB's lock while the closer unlinks the WAL before releasing it). So every
process holds this gate across its whole open..close of the file.

Two ``flock`` files beside the journal:
- ``<file>.lock``: exclusive while a process has the database open; holds the holder's pid.
- ``<file>.wait``: every process waiting for the gate holds it shared, so the holder can see,
  with one non-blocking syscall, that someone waits and hand the file over between steps.
flock locks belong to an open file description and vanish when a process dies, so a killed
holder never leaves the gate closed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from ..sdk.errors import JournalBusy

__all__ = ["FileGate", "process_state"]


def process_state(pid: int) -> str:
    """A short description of a process's state ('stopped', 'running', 'gone', ...)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            return "running"
        return "running"
    return {"T": "stopped (SIGSTOP)", "t": "stopped by a debugger", "Z": "a zombie",
            "D": "in uninterruptible I/O"}.get(state, "running")


class FileGate:
    """Exclusive, waitable, cross-process ownership of one file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._lock_fd: int | None = None
        self._wait_fd: int | None = None
        self.held = False
        self.held_since = 0.0

    def _fds(self) -> tuple[int, int]:
        if self._lock_fd is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            self._wait_fd = os.open(self.path + ".wait", os.O_RDWR | os.O_CREAT, 0o644)
        return self._lock_fd, self._wait_fd  # type: ignore[return-value]

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise

    def holder_pid(self) -> int | None:
        lock_fd, _ = self._fds()
        try:
            raw = os.pread(lock_fd, 32, 0).split(b"\0")[0].strip()
            return int(raw) if raw else None
        except (OSError, ValueError):
            return None

    def acquire(self, timeout: float, after_yield: bool = False) -> None:
        """Take the gate, waiting up to ``timeout`` seconds, else raise JournalBusy.

        ``after_yield``: this process just handed the gate over; do not take it straight back
        before a waiter had its chance.
        """
        if self.held:
            return
        lock_fd, wait_fd = self._fds()
        if not after_yield and self._try_lock(lock_fd):
            self._mark_held(lock_fd)
            return
        start = time.monotonic()
        fcntl.flock(wait_fd, fcntl.LOCK_SH)  # announce: someone waits
        try:
            if after_yield:
                time.sleep(0.005)
            pause = 0.0005
            while not self._try_lock(lock_fd):
                waited = time.monotonic() - start
                if waited >= timeout:
                    pid = self.holder_pid()
                    raise JournalBusy(self.path, pid, waited,
                                      process_state(pid) if pid else "")
                time.sleep(pause)
                pause = min(pause * 2, 0.004)
        finally:
            fcntl.flock(wait_fd, fcntl.LOCK_UN)
        self._mark_held(lock_fd)

    def _mark_held(self, lock_fd: int) -> None:
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, str(os.getpid()).encode(), 0)
        self.held = True
        self.held_since = time.monotonic()

    def someone_waits(self) -> bool:
        _, wait_fd = self._fds()
        if self._try_lock(wait_fd):
            fcntl.flock(wait_fd, fcntl.LOCK_UN)
            return False
        return True

    def release(self) -> None:
        if self.held and self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self.held = False

    def close(self) -> None:
        self.release()
        for fd in (self._lock_fd, self._wait_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._wait_fd = None
