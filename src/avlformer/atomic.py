"""Atomic file writes: a file only ever appears under its final name complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    # mkstemp (and safetensors' save_file) create 0600 files; outputs get what a plain open() would give them.
    return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for libraries that write by filename, renamed onto ``path`` when the
    block succeeds, deleted when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())  # the library may have replaced our file with one of its own
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """An empty staging folder beside ``path``, swapped in for ``path`` (its files synced, default permissions)
    when the block succeeds, deleted when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield staging
        file_mode = _default_file_mode()
        for child in staging.iterdir():
            if child.is_file() and not child.is_symlink():
                os.chmod(child, file_mode)
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp makes 0700 folders
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, target: Path) -> None:
    """Two renames when ``target`` exists (rename cannot replace a non-empty folder): the old folder aside into
    ``.<name>.<token>.old/``, then ``.<name>.<token>.tmp`` into place; ``finish_interrupted_swaps`` completes a
    swap killed between them."""
    if target.exists():
        retired = staging.with_name(staging.name.removesuffix(".tmp") + ".old")
        retired.mkdir()
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def finish_interrupted_swaps(parent: str | os.PathLike) -> list[Path]:
    """Complete the folder swaps a killed process left half done in ``parent``; returns the folders put back. A
    name left empty gets its staged copy (complete: synced before the swap), else the old one back."""
    parent = Path(parent)
    restored = []
    for retired in sorted(parent.glob(".*.old")):
        if not retired.is_dir() or retired.is_symlink():
            continue
        moved_aside = list(retired.iterdir())
        if any(not retired.name.startswith(f".{moved.name}.") for moved in moved_aside):
            continue  # not one of ours: left alone
        for moved in moved_aside:
            target = parent / moved.name
            if target.exists():
                continue
            staged = retired.with_name(retired.name.removesuffix(".old") + ".tmp")
            os.replace(staged if staged.is_dir() else moved, target)
            restored.append(target)
        shutil.rmtree(retired, ignore_errors=True)
    if restored:
        _fsync_folder(parent)
    return restored
