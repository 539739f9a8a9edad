"""One owner per folder: an advisory lock file, released by the kernel when its process dies.

A run folder (``search.runs``) or a feature cache being built (``fi_data.cache``) is written
by one process at a time. :class:`FolderLock` holds ``fcntl.flock`` on ``<folder>/.lock``
(Linux and macOS): the lock belongs to the open file, so it disappears with its process
however that process ends (``kill -9`` included) — a lock left by a dead process is never
in the way, there is nothing stale to clean. The file's text says who holds it (pid, host,
start time, command), so the refusal can name the holder.

Locks are advisory: only processes of this toolkit look at them. Where ``fcntl`` does not
exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"
"""The lock file inside the locked folder."""

WAIT_POLL_S = 2.0
"""Seconds between two attempts of a waiting :class:`FolderLock`."""


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']} since {started} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class FolderLock:
    """Context manager: hold ``<folder>/.lock`` exclusively for the ``with`` block.

    Args:
        folder: the folder to own (created if missing).
        what: how to name the folder in messages (``"run folder"``, ``"feature cache"``).
        wait: when held by another process, wait for it (printing once who holds it)
            instead of raising.

    Raises:
        FolderInUseError: on entering, when another live process holds the lock and
            ``wait`` is false; the message names the folder and the holder (pid, host,
            start time, command).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder", *, wait: bool = False):
        self.folder, self.what, self.wait = Path(folder), what, wait
        self.path = self.folder / LOCK_NAME
        self._file = None

    def _try(self) -> bool:
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def __enter__(self) -> FolderLock:
        if fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until __exit__
        told = False
        while not self._try():
            if not self.wait:
                holder = _holder(self.path)
                self._file.close()
                self._file = None
                raise FolderInUseError(f"{self.folder}: this {self.what} is in use by {holder}. Wait for it to "
                                       "finish, stop it, or use another folder.")
            if not told:
                print(f"[lock] {self.folder}: this {self.what} is in use by {_holder(self.path)}; waiting for it",
                      flush=True)
                told = True
            time.sleep(WAIT_POLL_S)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                                     "command": " ".join(sys.argv)[:300]}))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
