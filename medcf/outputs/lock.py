"""One job per output folder at a time: an advisory lock the operating system drops when the process ends,
however it ends (so a killed job never leaves a stale lock behind)."""

from __future__ import annotations

import fcntl
from pathlib import Path

LOCK_FILE = ".lock"


class OutputFolderInUse(RuntimeError):
    """Another process holds the output folder's lock.

    Args:
        *args: the one-line message, as for :class:`RuntimeError`.
    """


class OutputFolderLock:
    """``with OutputFolderLock(folder):`` holds ``folder/.lock`` exclusively, or raises OutputFolderInUse.

    Args:
        folder: the output folder; created on entering when missing.

    Raises:
        OutputFolderInUse: on entering, when another process holds the lock (it is not waited for).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._handle = None

    def __enter__(self) -> OutputFolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutputFolderInUse(
                f"output_dir {self.folder}: another medcf job is writing to this folder; wait for it or use another"
            ) from None
        self._handle = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
