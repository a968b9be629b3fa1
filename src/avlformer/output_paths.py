"""Where a command may write: never over one of its inputs, never inside a checkpoint folder. Commands check
before any work starts; each check returns the problem naming the flag and path, or None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

# A folder holding any of these is a checkpoint: ours, an upstream/released one, a Hugging Face model folder.
CHECKPOINT_MARKERS = ("model.safetensors", "model.bin", "pytorch_model.bin", "training_state.pt")

PathLike = str | os.PathLike


def enclosing_checkpoint(path: PathLike) -> Path | None:
    """The checkpoint folder that ``path`` is or lies in (links followed), or None."""
    resolved = Path(os.path.realpath(path))
    for folder in (resolved, *resolved.parents):
        if any((folder / marker).is_file() for marker in CHECKPOINT_MARKERS):
            return folder
    return None


def _writable_parent_problem(path: Path, flag: str) -> str | None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} {path}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} {path}: folder {parent} is not writable"
    return None


def output_file_problem(output: PathLike, flag: str = "--output", inputs: Iterable[PathLike] = (),
                        example: str = "output.json", input_folders: Iterable[PathLike] = ()) -> str | None:
    """Why ``output`` cannot be written as a file, or None. ``inputs``: files it must not overwrite;
    ``input_folders``: folders whose existing files it must not overwrite."""
    path = Path(output)
    if path.is_dir():
        return f"{flag} {output}: is a folder; give a file name, e.g. {path / example}"
    if path.exists():
        if any(Path(given).exists() and path.samefile(given) for given in inputs):
            return f"{flag} {output}: is one of the input files; give another file name"
        for folder in input_folders:
            if Path(folder).is_dir() and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder)):
                return f"{flag} {output}: would overwrite a file of the input folder {folder}; give another file name"
    if (checkpoint := enclosing_checkpoint(path.parent)) is not None:
        return f"{flag} {output}: lies inside the checkpoint folder {checkpoint}; write it elsewhere"
    return _writable_parent_problem(path, flag)


def output_folder_problem(folder: PathLike, flag: str) -> str | None:
    """Why ``folder`` cannot be (created and) written into as a command's output folder, or None."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return f"{flag} {folder}: is a file, not a folder"
    if (checkpoint := enclosing_checkpoint(path)) is not None:
        return f"{flag} {folder}: lies inside the checkpoint folder {checkpoint}; give a folder outside it"
    if path.is_dir():
        return None if os.access(path, os.W_OK | os.X_OK) else f"{flag} {folder}: folder is not writable"
    return _writable_parent_problem(path, flag)
