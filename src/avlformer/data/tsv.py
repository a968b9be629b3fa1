"""Upstream's TSV container (docs/upstream.md §1.3): ``<name>.tsv`` rows plus ``<name>.lineidx`` (text) and
``<name>.lineidx.8b`` (u64) row offsets, the index named by dropping ``.tsv`` (``a.img.tsv`` -> ``a.img.lineidx``).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from avlformer.atomic import atomic_write
from avlformer.data.per_process import PerProcessHandle

_OFFSET_DTYPE = np.dtype("<u8")
_KEY_PROBE_BYTES = 512


def lineidx_path(tsv_path: str | os.PathLike) -> Path:
    """``a/b.img.tsv`` -> ``a/b.img.lineidx`` (upstream replaces the last extension)."""
    return Path(os.path.splitext(os.fspath(tsv_path))[0] + ".lineidx")


def lineidx_8b_path(tsv_path: str | os.PathLike) -> Path:
    return Path(os.fspath(lineidx_path(tsv_path)) + ".8b")


def _encode_field(field: str | bytes, tsv_path: Path) -> bytes:
    data = field if isinstance(field, bytes) else str(field).encode("utf-8")
    # A tab or newline inside a field would silently shift every later column or row.
    if b"\t" in data or b"\n" in data:
        raise ValueError(f"{tsv_path}: a field contains a tab or newline, which the TSV format cannot hold: "
                         f"{data[:60]!r}")
    return data


class TSVWriter:
    """Streaming writer of a TSV and both index files. Nothing appears under the final names until ``close``
    succeeds; an exception inside the ``with`` block removes every temporary file. Fields are ``str`` or ``bytes``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stack: contextlib.ExitStack | None = None
        self._offset = 0
        self.num_rows = 0

    def __enter__(self) -> "TSVWriter":
        stack = contextlib.ExitStack()
        # Entered first, so renamed last: once the .tsv exists its index files already do.
        self._tsv = stack.enter_context(atomic_write(self.path, "wb"))
        self._lineidx = stack.enter_context(atomic_write(lineidx_path(self.path), "wb"))
        self._lineidx_8b = stack.enter_context(atomic_write(lineidx_8b_path(self.path), "wb"))
        self._stack = stack
        return self

    def write(self, row: Sequence[str | bytes]) -> None:
        if self._stack is None:
            raise RuntimeError(f"{self.path}: TSVWriter.write called outside its `with` block")
        line = b"\t".join(_encode_field(field, self.path) for field in row) + b"\n"
        self._tsv.write(line)
        self._lineidx.write(b"%d\n" % self._offset)
        self._lineidx_8b.write(self._offset.to_bytes(8, "little"))
        self._offset += len(line)
        self.num_rows += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        return bool(stack.__exit__(exc_type, exc, tb)) if stack is not None else False


def _scan_offsets(tsv_path: Path) -> np.ndarray:
    offsets, position = [], 0
    with open(tsv_path, "rb") as handle:
        for line in handle:
            offsets.append(position)
            position += len(line)
    return np.asarray(offsets, dtype=_OFFSET_DTYPE)


def _read_lineidx_text(path: Path) -> np.ndarray:
    try:
        values = [int(line) for line in path.read_text(encoding="ascii").split()]
    except ValueError as error:
        raise ValueError(f"{path}: not a .lineidx file (one decimal offset per line expected): {error}") from None
    return np.asarray(values, dtype=_OFFSET_DTYPE)


def _read_lineidx_8b(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size % 8:
        raise ValueError(f"{path}: size {size} is not a multiple of 8, so it is not a .lineidx.8b file")
    return np.fromfile(path, dtype=_OFFSET_DTYPE)


class TSVFile:
    """Random access to the rows of an upstream TSV, one file handle per process (``PerProcessHandle``). Every read
    checks that the row ends exactly where the index says the next one starts, so a stale index is reported instead
    of returning shifted rows."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: TSV file not found")
        self._index_source: Path | None = None
        self._handle = PerProcessHandle(functools.partial(open, self.path, "rb"))

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        for index_path, reader in ((lineidx_8b_path(self.path), _read_lineidx_8b),
                                   (lineidx_path(self.path), _read_lineidx_text)):
            if index_path.is_file():
                self._index_source = index_path
                offsets = reader(index_path)
                self._check_offsets(offsets)
                return offsets
        # Readers never write into the data folder (it may be read-only, or shared with the original's code, which
        # must not depend on our having touched it): a missing index is built in memory, once per TSVFile.
        return _scan_offsets(self.path)

    def _check_offsets(self, offsets: np.ndarray) -> None:
        size = self.path.stat().st_size
        problem = None
        if len(offsets) == 0:
            problem = "is empty but the TSV is not" if size else None
        elif offsets[0] != 0:
            problem = f"starts at offset {int(offsets[0])}, not 0"
        elif len(offsets) > 1 and not np.all(offsets[1:] > offsets[:-1]):
            problem = "has offsets that do not increase"
        elif int(offsets[-1]) >= size:
            problem = f"points past the end of the TSV ({int(offsets[-1])} >= {size} bytes)"
        if problem:
            raise ValueError(f"{self._index_source} does not match {self.path}: the index {problem}; "
                             f"delete the index files to rebuild them")

    def __len__(self) -> int:
        return len(self.offsets)

    def _row_start(self, index: int) -> int:
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"{self.path}: row {index} out of range (the file has {count} rows)")
        return int(self.offsets[index % count])

    def _row_end(self, index: int) -> int:
        index %= len(self)
        return int(self.offsets[index + 1]) if index + 1 < len(self) else self.path.stat().st_size

    def row_bytes(self, index: int) -> bytes:
        """Row ``index`` as raw bytes, without the trailing newline."""
        start = self._row_start(index)
        handle = self._handle.get()
        handle.seek(start)
        line = handle.readline()
        if start + len(line) != self._row_end(index) or not line.endswith(b"\n"):
            raise ValueError(f"{self._index_source or 'the index'} does not match {self.path}: row {index} at "
                             f"byte {start} does not end where the next row starts; delete the index files to "
                             f"rebuild them")
        return line[:-1]

    def row(self, index: int) -> list[str]:
        """Row ``index`` split on tabs, each field stripped (as upstream's reader does)."""
        return [field.strip() for field in self.row_bytes(index).decode("utf-8").split("\t")]

    def key(self, index: int) -> str:
        """Column 0 of row ``index``, read without loading the rest of the (possibly large) row."""
        start = self._row_start(index)
        end = self._row_end(index)
        handle = self._handle.get()
        handle.seek(start)
        head = b""
        while True:
            chunk = handle.read(min(_KEY_PROBE_BYTES, end - start - len(head)))
            head += chunk
            cut = min((p for p in (head.find(b"\t"), head.find(b"\n")) if p >= 0), default=-1)
            if cut >= 0:
                return head[:cut].decode("utf-8").strip()
            if not chunk:
                return head.decode("utf-8").strip()

    def keys(self) -> list[str]:
        return [self.key(i) for i in range(len(self))]

    def close(self) -> None:
        self._handle.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()
