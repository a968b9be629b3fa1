"""Atomic file writes: a file only ever appears under its final name complete.

Everything that writes an output a later step (or a rerun) trusts goes through here, so an interrupted job never
leaves a half-written file that looks finished.
"""

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
    # mkstemp creates 0600 files, and so do some libraries (safetensors' save_file); finished outputs should get
    # the permissions a plain open() would give them.
    return 0o666 & ~_current_umask()


def _make_temp(path: Path) -> tuple[int, str]:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _default_file_mode())
    return fd, tmp_name


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _make_temp(path)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for libraries that write by filename (h5py, safetensors, torch.save);
    rename it onto ``path`` when the block succeeds, delete it when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _make_temp(path)
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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; when the block succeeds, fsync its files and swap it in for
    ``path`` (an existing folder is moved aside first: rename cannot replace a non-empty folder). Its files get the
    default permissions (whatever wrote them). When the block fails, the staging folder is deleted and ``path``
    is left as it was."""
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
    """Two renames when ``target`` exists (the old folder aside into ``.<name>.<token>.old/``, then the staging
    folder ``.<name>.<token>.tmp`` into place); a process killed between them leaves both copies, which
    ``finish_interrupted_swaps`` finds by the shared token."""
    if target.exists():
        retired = _retired_for(staging)
        retired.mkdir()
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    _fsync_folder(target.parent)


def _retired_for(staging: Path) -> Path:
    return staging.with_name(staging.name.removesuffix(".tmp") + ".old")


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def finish_interrupted_swaps(parent: str | os.PathLike) -> list[Path]:
    """Complete the folder swaps of ``atomic_folder`` that a killed process left half done in ``parent``; returns
    the folders put back under their names. A name left empty gets its staged copy (complete: the swap starts only
    after its files are synced), else the old one back; otherwise only the ``.old`` leftovers go (the caller
    removes stale staging folders)."""
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
