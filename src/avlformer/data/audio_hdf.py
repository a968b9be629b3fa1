"""The per-split HDF5 of raw mp3 bytes, ``audio_hdf/<split>_mp3.hdf`` (docs/upstream.md §1.4): dataset
``audio_name`` (vlen str, the clip ids) and dataset ``mp3`` (vlen uint8, each clip's whole mp3 file), row i of one
describing row i of the other. ``prepare`` writes it, the loaders read it."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from avlformer.atomic import atomic_path
from avlformer.data.per_process import PerProcessHandle


def write_audio_hdf(path: Path, names: list[str], payloads: Iterable[bytes]) -> None:
    """Row i holds ``names[i]`` and the i-th of ``payloads`` (streamed: the whole split never sits in memory).
    Written atomically; fewer or more payloads than names is an error and leaves nothing behind."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            # track_times=False: identical inputs give identical bytes (reruns and resumes are comparable).
            handle.create_dataset("audio_name", data=np.array(names, dtype=object), dtype=h5py.string_dtype(),
                                  track_times=False)
            mp3 = handle.create_dataset("mp3", shape=(len(names),), dtype=h5py.vlen_dtype(np.uint8),
                                        track_times=False)
            count = 0
            for index, payload in enumerate(payloads):
                if index >= len(names):
                    raise ValueError(f"{path}: {len(names)} names but more mp3 payloads")
                mp3[index] = np.frombuffer(payload, dtype=np.uint8)
                count += 1
            if count != len(names):
                raise ValueError(f"{path}: {len(names)} names but {count} mp3 payloads")


def _open_audio_hdf5(path: Path) -> h5py.File:
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from None
    missing = [name for name in ("audio_name", "mp3") if name not in handle]
    if missing:
        handle.close()
        raise ValueError(f"{path}: missing dataset(s) {missing}; expected 'audio_name' and 'mp3'")
    if len(handle["audio_name"]) != len(handle["mp3"]):
        count = (len(handle["audio_name"]), len(handle["mp3"]))
        handle.close()
        raise ValueError(f"{path}: 'audio_name' has {count[0]} rows but 'mp3' has {count[1]}")
    return handle


class HDF5AudioReader:
    """Reader of ``<split>_mp3.hdf``, one h5py handle per process (``PerProcessHandle``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: audio HDF5 file not found")
        self._file = PerProcessHandle(functools.partial(_open_audio_hdf5, self.path))

    @functools.cached_property
    def names(self) -> list[str]:
        """The clip ids, row by row."""
        return [str(name) for name in self._file.get()["audio_name"].asstr()[:]]

    def mp3(self, index: int) -> np.ndarray:
        """Raw encoded bytes of row ``index`` as a uint8 array."""
        return np.asarray(self._file.get()["mp3"][index], dtype=np.uint8)

    def close(self) -> None:
        self._file.close()
