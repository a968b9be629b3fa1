"""Cached encoder outputs (``avlformer extract-features``): one HDF5 file per split, read by ``train --features``;
the format is in docs/training.md ("Format"). bf16 is stored as raw uint16 and widened to float32 on reading, like
fp16.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from avlformer.data.per_process import PerProcessHandle
from avlformer.data.recipe import PreprocessRecipe

FORMAT_VERSION = 1
SUFFIX = ".features.h5"
STORAGE_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}


class FeatureMismatchError(ValueError):
    """Cached features that do not fit the model (or the data) they are used with; the message is one line."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a feature file holds, so that features made by other encoders are never used by mistake."""

    fingerprint: str        # sha256 of the frozen encoders' weights and of the settings that shape their output
    num_video_tokens: int
    video_dim: int
    num_audio_tokens: int
    audio_dim: int
    dtype: str = "fp16"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def problem_with(self, model: "FeatureSpec") -> str | None:
        """Why features of this spec cannot feed a model whose encoders give ``model`` (None: they can)."""
        for name, what in (("num_video_tokens", "video tokens"), ("video_dim", "video width"),
                           ("num_audio_tokens", "audio tokens"), ("audio_dim", "audio width")):
            if getattr(self, name) != getattr(model, name):
                return f"{getattr(self, name)} {what} per clip, the model's encoders give {getattr(model, name)}"
        if self.fingerprint != model.fingerprint:
            return (f"made by other encoder weights (fingerprint {self.fingerprint[:12]}, this model's "
                    f"{model.fingerprint[:12]}); pass the --pretrained-checkpoint or --swin/--passt-checkpoint the "
                    f"features were extracted with")
        return None


def feature_path(folder: str | os.PathLike, yaml_path: str | os.PathLike) -> Path:
    return Path(folder) / f"{Path(yaml_path).stem}{SUFFIX}"


def to_storage(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return tensor.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return tensor.detach().float().cpu().numpy().astype(STORAGE_DTYPES[dtype])


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    if dtype == "bf16":
        return torch.from_numpy(array.astype(np.uint16).view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


def write_feature_file(path: Path, spec: FeatureSpec, recipe: PreprocessRecipe, yaml_name: str, keys: list[str],
                       clips) -> None:
    """Write ``path`` from ``clips``, an iterable of (video, audio) numpy arrays in storage dtype, row i = keys[i].
    The caller makes it atomic (``atomic_path``)."""
    storage = STORAGE_DTYPES[spec.dtype]
    with h5py.File(path, "w") as handle:
        handle.attrs.update(format_version=FORMAT_VERSION, spec=spec.to_json(), recipe=json.dumps(recipe.to_dict()),
                            yaml=yaml_name)
        handle.create_dataset("keys", data=np.array(keys, dtype=object), dtype=h5py.string_dtype(),
                              track_times=False)
        shapes = {"video": (spec.num_video_tokens, spec.video_dim), "audio": (spec.num_audio_tokens, spec.audio_dim)}
        datasets = {name: handle.create_dataset(name, shape=(len(keys), *shape), dtype=storage, chunks=(1, *shape),
                                                track_times=False) for name, shape in shapes.items()}
        count = 0
        for row, (video, audio) in enumerate(clips):
            datasets["video"][row] = video
            datasets["audio"][row] = audio
            count += 1
        if count != len(keys):
            raise ValueError(f"{path}: {len(keys)} clips planned but {count} written")


class FeatureFile:
    """Random access to one split's cached features by row or key; one read-only handle per process."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no cached features (run `avlformer extract-features`)")
        try:
            with h5py.File(self.path, "r") as handle:
                version = int(handle.attrs["format_version"])
                self.spec = FeatureSpec(**json.loads(handle.attrs["spec"]))
                self.recipe = PreprocessRecipe.from_dict(json.loads(handle.attrs["recipe"]))
                self.yaml_name = str(handle.attrs["yaml"])
                self.keys = [k.decode() if isinstance(k, bytes) else str(k) for k in handle["keys"][()]]
                shapes = (handle["video"].shape, handle["audio"].shape)
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise FeatureMismatchError(f"{self.path}: not a readable feature file ({error})") from None
        if version != FORMAT_VERSION:
            raise FeatureMismatchError(f"{self.path}: feature format {version}, this AVLFormer reads "
                                       f"{FORMAT_VERSION}; extract the features again")
        spec = self.spec
        expected = ((len(self.keys), spec.num_video_tokens, spec.video_dim),
                    (len(self.keys), spec.num_audio_tokens, spec.audio_dim))
        if shapes != expected:
            raise FeatureMismatchError(f"{self.path}: datasets of shape {shapes}, its header says {expected}")
        self.row_of = {key: row for row, key in enumerate(self.keys)}
        self._handle = PerProcessHandle(functools.partial(h5py.File, self.path, "r"))

    def __len__(self) -> int:
        return len(self.keys)

    def clip(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(video (Nv, Dv), audio (Na, Da)) of row ``row``, float32."""
        handle = self._handle.get()
        return (from_storage(handle["video"][row], self.spec.dtype),
                from_storage(handle["audio"][row], self.spec.dtype))

    def check_fits(self, model_spec: FeatureSpec) -> None:
        problem = self.spec.problem_with(model_spec)
        if problem:
            raise FeatureMismatchError(f"{self.path}: these features do not fit the model: {problem}")

    def check_data(self, recipe: PreprocessRecipe) -> None:
        if recipe != self.recipe:
            differences = self.recipe.differences(recipe, "training data")
            raise FeatureMismatchError(f"{self.path}: extracted from data prepared with another recipe than the "
                                       f"training data ({differences}); extract the features from this data again")

    def close(self) -> None:
        self._handle.close()
