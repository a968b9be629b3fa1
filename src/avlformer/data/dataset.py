"""CaptionDataset over an upstream metadata yaml (docs/upstream.md §1.5, §2), its collate and worker seeding. A
released FAVDBench ``datasets/`` folder and the output of ``avlformer prepare`` load the same way, read-only
(docs/data.md, "Loading"); frames are looked up by key, audio by row.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset, get_worker_info

from avlformer.config_fields import JsonDataclass
from avlformer.data.audio import load_clip
from avlformer.data.audio_hdf import HDF5AudioReader
from avlformer.data.caption_tsv import read_caption_tsv
from avlformer.data.clip_ids import clip_id_from_key
from avlformer.data.masking import make_train_text
from avlformer.data.recipe import CLIP_SECONDS, SAMPLE_RATE, recipe_for_yaml, recipe_path_for_yaml
from avlformer.data.tokenizer import load_tokenizer
from avlformer.data.transforms import clip_from_frames
from avlformer.device import one_cpu_thread
from avlformer.data.tsv import TSVFile

FRAME_COLUMNS_START = 2  # key, {"class": -1, "width": W, "height": H}, then the base64 JPEG frames


@dataclass
class DataConfig(JsonDataclass):
    num_frames: int = 32
    image_size: int = 224
    sample_rate: int = SAMPLE_RATE
    clip_seconds: float = CLIP_SECONDS
    max_seq_length: int = 300
    mask_prob: float = 0.25
    max_masked_tokens: int = 75

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


@dataclass(frozen=True)
class DatasetPaths:
    yaml: Path
    frames: Path
    audio: Path
    captions: Path | None
    linelist: Path | None


def _metadata_file(yaml_path: Path, root: Path, key: str, value: str | None, *, required: bool,
                   must_exist: bool) -> Path | None:
    """Upstream's rule for caption/label/linelist files: ``root/metadata/<value>``, else ``<value>`` as given.
    ``required``: the yaml must name the file; ``must_exist``: a named file that is missing is an error (else the
    entry is ignored, as upstream ignored a missing linelist)."""
    if not value:
        if required:
            raise ValueError(f"{yaml_path}: the yaml has no '{key}' entry")
        return None
    for candidate in (root / "metadata" / value, Path(value)):
        if candidate.is_file():
            return candidate
    if must_exist:
        raise FileNotFoundError(f"{yaml_path}: '{key}: {value}' not found as {root / 'metadata' / value} "
                                f"nor as {Path(value)}")
    return None


def resolve_paths(yaml_path: str | os.PathLike, need_captions: bool = True) -> DatasetPaths:
    """Read an upstream metadata yaml and resolve its entries the way upstream did (root = the yaml's folder's
    parent; ``img`` and ``audio`` relative to root, caption-side files relative to ``root/metadata``)."""
    yaml_path = Path(yaml_path)
    if not yaml_path.is_file():
        raise FileNotFoundError(f"{yaml_path}: dataset yaml not found")
    try:
        spec = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{yaml_path}: not valid YAML ({error})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{yaml_path}: expected a mapping of keys (img, caption, audio, ...)")
    root = yaml_path.resolve().parent.parent
    for key in ("img", "audio"):
        if not spec.get(key):
            raise ValueError(f"{yaml_path}: the yaml has no '{key}' entry")
    frames, audio = root / spec["img"], root / spec["audio"]
    for key, path in (("img", frames), ("audio", audio)):
        if not path.is_file():
            raise FileNotFoundError(f"{yaml_path}: '{key}: {spec[key]}' resolves to {path}, which does not exist")
    return DatasetPaths(
        yaml=yaml_path, frames=frames, audio=audio,
        captions=_metadata_file(yaml_path, root, "caption", spec.get("caption"), required=need_captions,
                                must_exist=True),
        linelist=_metadata_file(yaml_path, root, "caption_linelist", spec.get("caption_linelist"), required=False,
                                must_exist=False))


def read_linelist(path: Path, captions: list[list[str]]) -> list[tuple[int, int]]:
    table = TSVFile(path)
    pairs = []
    for row in range(len(table)):
        columns = table.row(row)
        try:
            pair = (int(columns[0]), int(columns[1]))
        except (ValueError, IndexError):
            raise ValueError(f"{path}: row {row}: expected two integers 'img_idx \\t cap_idx'") from None
        if not (0 <= pair[0] < len(captions) and 0 <= pair[1] < len(captions[pair[0]])):
            raise ValueError(f"{path}: row {row}: {pair} points outside the caption TSV")
        pairs.append(pair)
    table.close()
    return pairs


class CaptionDataset(Dataset):
    """Train items: video_key, frames, audio, input_ids, target_ids, masked_pos, text_len (one per caption, or per
    linelist entry). Eval items: video_key, frames, audio and, when the yaml has captions, captions (one item per
    video). Augmentation randomness comes from a per-process numpy Generator seeded by ``seed_worker``."""

    def __init__(self, yaml_path: str | os.PathLike, data_config: DataConfig | None = None, is_train: bool = True,
                 tokenizer=None):
        self.config = data_config or DataConfig()
        self.is_train = is_train
        self.paths = resolve_paths(yaml_path, need_captions=is_train)
        self.recipe = recipe_for_yaml(self.paths.yaml)
        self._check_recipe()
        self.tokenizer = tokenizer if tokenizer is not None or not is_train else load_tokenizer()
        self.frames = TSVFile(self.paths.frames)
        self.audio = HDF5AudioReader(self.paths.audio)
        self.keys, self.captions = self._load_keys()
        self.items = self._build_items()
        self._frame_row = self._map_frame_rows()
        self._check_audio_alignment()

    def _check_recipe(self) -> None:
        """The mp3s were made at the recipe's rate, and for clips of its length (e.g. the silence given to a clip
        without audio). Reading them at another rate, or as longer clips, is not the data the recipe describes;
        reading a shorter clip is a model's choice (the demo's tiny model hears the first second)."""
        recorded = recipe_path_for_yaml(self.paths.yaml)
        origin = recorded.name if recorded.is_file() else f"the paper recipe, as there is no {recorded.name}"
        if self.config.sample_rate != self.recipe.sample_rate:
            raise ValueError(f"{self.paths.yaml}: the data config reads audio at {self.config.sample_rate} Hz but "
                             f"this data was prepared at {self.recipe.sample_rate} Hz ({origin})")
        if self.config.clip_seconds > self.recipe.clip_seconds:
            raise ValueError(f"{self.paths.yaml}: the data config asks for {self.config.clip_seconds:g} s of audio "
                             f"per clip but this data was prepared for {self.recipe.clip_seconds:g} s clips "
                             f"({origin})")

    def _load_keys(self) -> tuple[list[str], list[list[str]] | None]:
        if self.paths.captions is not None:
            rows = read_caption_tsv(self.paths.captions)
            return [row.key for row in rows], [row.captions for row in rows]
        return self.frames.keys(), None  # eval without references: every video of the frame TSV

    def _build_items(self) -> list[tuple[int, int]]:
        if not self.is_train:
            return [(row, 0) for row in range(len(self.keys))]
        if self.paths.linelist is not None:
            return read_linelist(self.paths.linelist, self.captions)
        return [(row, cap) for row, caps in enumerate(self.captions) for cap in range(len(caps))]

    def _map_frame_rows(self) -> list[int]:
        by_key = {key: row for row, key in enumerate(self.frames.keys())}
        missing = [key for key in self.keys if key not in by_key]
        if missing:
            raise ValueError(f"{self.paths.frames}: {len(missing)} key(s) of {self.paths.captions} have no frame "
                             f"row, e.g. {missing[:3]}")
        self.frames.close()  # reopened lazily in each worker
        return [by_key[key] for key in self.keys]

    def _check_audio_alignment(self) -> None:
        names = self.audio.names
        source = self.paths.captions or self.paths.frames
        if len(names) < len(self.keys):
            raise ValueError(f"{self.paths.audio} has {len(names)} audio rows but {source} has {len(self.keys)} "
                             f"videos; row i of the HDF5 must be the audio of row i of the captions")
        for row, key in enumerate(self.keys):
            if names[row] != clip_id_from_key(key):
                raise ValueError(f"{self.paths.audio} row {row} is audio '{names[row]}' but row {row} of {source} "
                                 f"is '{key}' (expects audio '{clip_id_from_key(key)}'); the two files must list "
                                 f"the same videos in the same order")
        self.audio.close()  # h5py handles must not cross a fork; reopened lazily per worker

    def set_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        return np.random.default_rng(torch.initial_seed())

    def __len__(self) -> int:
        return len(self.items)

    def load_frames(self, row: int) -> torch.Tensor:
        # Raw bytes split: the ~2 MB of base64 is never decoded to str, copied or stripped.
        columns = self.frames.row_bytes(self._frame_row[row]).split(b"\t")
        key = self.keys[row]
        if len(columns) <= FRAME_COLUMNS_START:
            raise ValueError(f"{self.paths.frames}: row for '{key}' has no frame columns")
        return clip_from_frames(columns[FRAME_COLUMNS_START:], num_frames=self.config.num_frames,
                                image_size=self.config.image_size, train=self.is_train, rng=self.rng,
                                source=f"{self.paths.frames} '{key}'")

    def load_audio(self, row: int) -> torch.Tensor:
        return load_clip(self.audio.mp3(row), clip_samples=self.config.clip_samples,
                         sample_rate=self.config.sample_rate, train=self.is_train, rng=self.rng,
                         source=f"{self.paths.audio} row {row} ('{self.keys[row]}')")

    def __getitem__(self, index: int) -> dict[str, Any]:
        with one_thread_outside_workers():
            return self._item(index)

    def _item(self, index: int) -> dict[str, Any]:
        row, caption_index = self.items[index]
        item = {"video_key": self.keys[row], "frames": self.load_frames(row), "audio": self.load_audio(row)}
        if self.is_train:
            item.update(self.train_text(row, caption_index))
        elif self.captions is not None:
            # FAVDBench has one paragraph per video; the first is the reference carried in the batch.
            item["caption"] = self.captions[row][0]
        return item

    def train_text(self, row: int, caption_index: int) -> dict[str, Any]:
        text = make_train_text(self.captions[row][caption_index], self.tokenizer, self.rng,
                               max_seq_length=self.config.max_seq_length, mask_prob=self.config.mask_prob,
                               max_masked_tokens=self.config.max_masked_tokens)
        return {"input_ids": text.input_ids, "target_ids": text.target_ids, "masked_pos": text.masked_pos,
                "text_len": text.text_len}


def one_thread_outside_workers():
    """Build an item (and collate a batch) at one intra-op thread when that happens in the training process
    itself (``num_workers`` 0), as DataLoader workers do: the same tensors (every op here is elementwise or a
    copy), without the thread barriers that stall on busy cores (docs/data.md, "Loader threads")."""
    return contextlib.nullcontext() if get_worker_info() is not None else one_cpu_thread()


_STACKED = ("frames", "audio", "input_ids", "target_ids", "masked_pos")


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items -> the batch dict of docs/architecture.md (video_keys, frames, audio[, input_ids, target_ids,
    masked_pos, text_len][, captions])."""
    if not items:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {"video_keys": [item["video_key"] for item in items]}
    with one_thread_outside_workers():  # a copy; several threads would only wait for each other (above)
        for name in _STACKED:
            if name in items[0]:
                batch[name] = torch.stack([item[name] for item in items])
    if "text_len" in items[0]:
        batch["text_len"] = torch.tensor([item["text_len"] for item in items], dtype=torch.int64)
    if "caption" in items[0]:
        batch["captions"] = [item["caption"] for item in items]
    return batch


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn. torch already gives each worker ``base_seed + worker_id``, with base_seed drawn
    from the loader's generator every epoch; we derive every other RNG from it. (Upstream seeded workers with
    their bare worker id, so every epoch and every run repeated the same augmentations.)"""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "set_seed"):
        info.dataset.set_seed(seed)
