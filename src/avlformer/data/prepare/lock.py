"""One prepare per data folder at a time: ``DIR/.prepare.lock``, held with ``flock`` for the whole run.

The lock goes away with its process (even on SIGKILL), so a crashed run never blocks the next one. The file is
removed on release; a run that opened it just before that removal notices (the path no longer names the file it
locked) and tries again, so two runs can never both believe they hold the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from avlformer.data.prepare.layout import PrepareError

LOCK_NAME = ".prepare.lock"


def _locked_descriptor(path: Path, data_dir: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise PrepareError(f"{data_dir}: cannot create {path.name} ({error.strerror}); prepare needs a "
                               f"writable data folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PrepareError(f"another prepare is running on {data_dir}; wait for it to finish") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed the file between our open and our lock


@contextlib.contextmanager
def prepare_lock(data_dir: Path) -> Iterator[None]:
    path = Path(data_dir) / LOCK_NAME
    fd = _locked_descriptor(path, Path(data_dir))
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)
