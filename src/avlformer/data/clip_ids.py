"""The one rule for clip ids, keys and video file names.

An **id** is the video file name without extension (``videos/test/abc.mp4`` -> ``abc``); a **key** is
``<split>/<id>.<ext>``. Ids with tabs, line breaks or control characters are refused by ``id_problem``.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def is_video_name(path: str | os.PathLike) -> bool:
    """By extension, any case (a name only: whether it is a readable file is checked where it is opened)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def clip_id_from_path(path: str | os.PathLike) -> str:
    """``videos/test/abc.mp4`` -> ``abc`` (only the last extension is removed: ``a.b.mp4`` -> ``a.b``)."""
    return Path(path).stem


def clip_id_from_key(key: str) -> str:
    """A TSV key or prediction id -> the clip id: last ``/`` component without its extension
    (``test/abc.mp4`` -> ``abc``; a bare ``abc`` stays ``abc``)."""
    name = PurePosixPath(key.strip()).name
    stem, extension = os.path.splitext(name)
    return stem if extension else name


def clip_key(split: str, clip_id: str, extension: str) -> str:
    """``<split>/<id>.<ext>``. The original's loader checks ``basename(key)[:-4]`` against the HDF5 audio name
    (docs/upstream.md §1.5), so the extension must have 3 letters: ``.webm``/``.m4v`` clips get ``.mp4`` keys (the key
    is a name, not a path; ``<split>.img.tsv`` maps it to the real file)."""
    return f"{split}/{clip_id}{extension if len(extension) == 4 else '.mp4'}"


def id_problem(clip_id: str) -> str | None:
    """Why ``clip_id`` cannot be used as a clip id, or None when it can."""
    if not clip_id or not clip_id.strip():
        return "empty clip id"
    if clip_id != clip_id.strip():
        return f"clip id {clip_id!r} starts or ends with white space"
    bad = sorted({repr(char) for char in clip_id if unicodedata.category(char) in ("Cc", "Zl", "Zp")})
    if bad:
        return (f"clip id {clip_id!r} contains {', '.join(bad)} (tabs, line breaks and control characters "
                f"cannot be stored in the TSV files); rename the file")
    if "/" in clip_id or "\\" in clip_id:
        return f"clip id {clip_id!r} contains a path separator"
    return None
