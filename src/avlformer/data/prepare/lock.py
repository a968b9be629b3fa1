"""One prepare per data folder at a time: ``DIR/.prepare.lock``, held for the whole run (``avlformer.folder_lock``:
a crashed run never blocks the next one)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from avlformer.data.prepare.layout import PrepareError
from avlformer.folder_lock import folder_lock

LOCK_NAME = ".prepare.lock"


@contextlib.contextmanager
def prepare_lock(data_dir: Path) -> Iterator[None]:
    with folder_lock(Path(data_dir) / LOCK_NAME, f"another prepare is running on {data_dir}; wait for it to finish",
                     PrepareError):
        yield
