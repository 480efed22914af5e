"""The lock of an output folder: one writer at a time.

A writer holds an exclusive ``flock`` on ``OUT/imgbeddings.lock`` for its whole run. The kernel
releases it when the holder closes it, exits or dies (``kill -9`` included), so a lock file left
behind never blocks anyone; the PID, host and start time written in it are only informational
(``imgbeddings info`` shows them, and an OutputLocked error names them). The file is never
deleted while in use; a waiter that locks a file since removed with its folder starts over.
On NFS, Linux emulates ``flock`` with POSIX locks, which work across clients.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import OutputError, OutputLocked

LOCK = "imgbeddings.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists here (True when it cannot be told)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, another user's
        return True
    return True


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte instead
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class FolderLock:
    """The exclusive lock a writer holds on an output folder (``imgbeddings.lock``).

    ``flock`` on an open descriptor: the kernel releases it when the holder exits or dies, so a
    stale file never blocks anyone. The file is never deleted while in use (a waiter that locks
    a file since removed with its folder notices and starts over).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK
        self.fd: int | None = None
        self.owner = 0
        self.created = False

    @property
    def held(self) -> bool:
        return self.fd is not None and self.owner == os.getpid()

    def acquire(self, wait: float | None) -> None:
        """Lock, refusing at once (``wait`` None), after ``wait`` seconds, or never (inf, < 0)."""
        if wait is None:
            deadline = None
        elif wait < 0 or math.isinf(wait):
            deadline = math.inf
        else:
            deadline = time.monotonic() + wait
        announced, replaced = False, 0
        while True:
            fd = self.fd = self._open()
            if _try_lock(fd):
                if self._still_linked():
                    break
                self._close()  # the previous holder removed the folder: start over
                replaced += 1
                if replaced > 100:
                    raise OutputError(f"cannot lock {self.path}: it keeps being removed")
                continue
            holder = self._holder(fd)
            self._close()
            now = time.monotonic()
            if deadline is None or now >= deadline:
                raise OutputLocked(
                    str(self.folder),
                    holder.get("pid"),
                    holder.get("host", ""),
                    holder.get("started", ""),
                    wait,
                )
            if not announced:
                announced = True
                who = f"PID {holder.get('pid', '?')}" + (
                    f" on {holder['host']}" if holder.get("host") else ""
                )
                limit = "" if math.isinf(deadline) else f" (up to {wait:g} s)"
                warnings.warn(
                    f"{self.folder} is being written by {who}: waiting for it to finish{limit}",
                    RuntimeWarning,
                    stacklevel=4,
                )
            time.sleep(min(0.2, max(deadline - now, 0.01)))
        self.owner = os.getpid()
        info = {
            "pid": self.owner,
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with contextlib.suppress(OSError):  # informational only (a full disk must not stop the run)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(info).encode() + b"\n")

    def release(self) -> None:
        """Unlock (only in the process that locked: a forked child merely closes its copy)."""
        if self.fd is None:
            return
        if self.owner == os.getpid():
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            with contextlib.suppress(ImportError, OSError):
                import fcntl

                fcntl.flock(self.fd, fcntl.LOCK_UN)
        self._close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()

    def _open(self) -> int:
        """Make the folder if needed (noting that we did) and open its lock file."""
        try:
            self.folder.mkdir(parents=True)
            self.created = True
        except FileExistsError:
            if not self.folder.is_dir():
                raise OutputError(
                    f"{self.folder} exists and is not a folder: give a folder for the output"
                ) from None
        except OSError as exc:
            raise OutputError(f"cannot create output folder {self.folder}: {exc.strerror or exc}") from exc
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # made by another user: lock it all the same, without a record
            try:
                return os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise OutputError(f"cannot lock output folder {self.folder}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise OutputError(f"cannot lock output folder {self.folder}: {exc.strerror or exc}") from exc

    def _still_linked(self) -> bool:
        """Whether the locked file is still the folder's lock file (not removed meanwhile)."""
        try:
            here, there = os.fstat(self.fd or -1), os.stat(self.path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    @staticmethod
    def _holder(fd: int) -> dict[str, Any]:
        for _ in range(5):  # the holder may not have written its record yet
            info = _read_holder(fd)
            if info:
                return info
            time.sleep(0.02)
        return {}

    def _close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def lock_holder(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who is writing an output folder (pid, host, started), or None; from the lock file's
    record, without locking (a record left by a dead process on this host is ignored)."""
    try:
        fd = os.open(Path(out_dir) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = _read_holder(fd)
    finally:
        os.close(fd)
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    if info.get("host") in (None, socket.gethostname()) and not pid_alive(pid):
        return None
    return info
