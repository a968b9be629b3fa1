"""A file handle opened on first use in each process.

Readers are built in the main process and handed to DataLoader workers; an inherited handle would share its file
position (plain files) or its library state (h5py) with the parent, so each process opens its own.
"""

from __future__ import annotations

import os
from typing import Any, Callable


class PerProcessHandle:
    def __init__(self, opener: Callable[[], Any]):
        self._opener = opener  # must pickle (a module-level function or a functools.partial of one)
        self._handle = None
        self._pid = -1

    def get(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle = self._opener()
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __getstate__(self):
        return {"_opener": self._opener, "_handle": None, "_pid": -1}
