"""``DIR/prepare_outputs.json``: what prepare wrote, so a rerun tells its own files from the user's and reuses
unchanged clips (docs/data.md); ``avlformer synth`` keeps the same kind of record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from avlformer.atomic import write_text_atomic

RECORD_NAME = "prepare_outputs.json"
RECORD_VERSION = 1


def digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_digest(path: str | os.PathLike) -> dict:
    return digest(Path(path).read_bytes())


def holds(path: str | os.PathLike, expected: dict | None) -> bool:
    """Whether ``path`` is a file holding exactly the bytes ``expected`` (a ``digest``) describes."""
    try:
        return expected is not None and Path(path).stat().st_size == expected["size"] and file_digest(path) == expected
    except OSError:
        return False


class OutputsRecord:
    def __init__(self, data_dir: Path, name: str = RECORD_NAME):
        self.data_dir = Path(data_dir)
        # Not in metadata/: it holds input timestamps, and the prepared files must not depend on them.
        self.path = self.data_dir / name
        self.files: dict[str, dict] = {}
        self.splits: dict[str, dict] = {}
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # none yet, or unreadable: then nothing counts as prepare's own
        if isinstance(stored, dict) and stored.get("version") == RECORD_VERSION:
            self.files = dict(stored.get("files") or {})
            self.splits = dict(stored.get("splits") or {})

    def _name(self, path: str | os.PathLike) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.data_dir))

    def wrote(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` holds exactly the bytes prepare last wrote there."""
        return holds(path, self.files.get(self._name(path)))

    def changed(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a file recorded here that no longer holds the bytes recorded for it."""
        return self._name(path) in self.files and Path(path).is_file() and not self.wrote(path)

    def will_write(self, path: str | os.PathLike, data: bytes) -> None:
        self.files[self._name(path)] = digest(data)

    def remember(self, path: str | os.PathLike) -> None:
        """Record a file just written (by a library that writes by file name)."""
        self.files[self._name(path)] = file_digest(path)

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"version": RECORD_VERSION, "files": self.files,
                                                 "splits": self.splits}, sort_keys=True))
