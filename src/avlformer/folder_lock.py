"""One job per folder at a time: a lock file held with ``flock`` for the whole job.

The lock dies with its process (even on SIGKILL). The file is removed on release; a job that opened it just before
the removal notices (the path names another file) and retries.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def _locked_descriptor(path: Path, busy: str, error: type[Exception]) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as problem:
            raise error(f"{path.parent}: cannot create {path.name} ({problem.strerror}); the folder must be "
                        f"writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise error(busy) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, busy: str, error: type[Exception]) -> Iterator[None]:
    """Hold the lock file ``path``; raise ``error(busy)`` at once when another process holds it."""
    path = Path(path)
    fd = _locked_descriptor(path, busy, error)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
