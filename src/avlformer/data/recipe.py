"""The preprocessing recipe: how raw clips became the frames and audio a model was trained on (docs/data.md, "The
preprocessing recipe"). The constants below are the paper recipe; other modules take these facts from here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from avlformer.atomic import write_text_atomic
from avlformer.config_fields import JsonDataclass, checked_fields
from avlformer.json_files import read_json

log = logging.getLogger(__name__)

RECIPE_NAME = "preprocessor_config.json"   # inside a checkpoint folder
RECIPE_VERSION = 1

STORED_FRAMES = 32          # frames kept per clip in the frame TSV
SHORT_SIDE = 256            # shorter side of a stored frame, pixels
# Above this, frames no longer fit libswscale's frame size limit or JPEG's 65,535-pixel sides at common aspect
# ratios; it still keeps every pixel of a 4K source.
MAX_SHORT_SIDE = 4096
JPEG_QUALITY = 95           # OpenCV's default, which the original's cv2.imencode used
SAMPLE_RATE = 32000         # mono audio rate everywhere (HDF5 mp3s, PaSST)
CLIP_SECONDS = 10.0         # audio length the loaders pad or truncate to
MP3_BITRATE = 96_000        # audio taken from a video (or silence) is encoded at this rate

# Frame ``k`` of ``n`` is the frame on screen at t0 + (k + 0.5) * D / n (see data/media.py); the only rule.
FRAME_TIMES = "bin-centres"
# Audio of a clip: its audio_mp3/<split>/<id>.mp3 (kept byte for byte when mono 32 kHz, else re-encoded), else
# the video's own audio stream, else silence.
AUDIO_MP3_ELSE_VIDEO = "mp3-else-video"
AUDIO_SOURCES = (AUDIO_MP3_ELSE_VIDEO,)


@dataclass(frozen=True)
class PreprocessRecipe(JsonDataclass):
    stored_frames: int = STORED_FRAMES
    short_side: int = SHORT_SIDE
    jpeg_quality: int = JPEG_QUALITY
    sample_rate: int = SAMPLE_RATE
    clip_seconds: float = CLIP_SECONDS
    mp3_bitrate: int = MP3_BITRATE
    frame_times: str = FRAME_TIMES
    audio_source: str = AUDIO_MP3_ELSE_VIDEO
    version: int = RECIPE_VERSION

    def __post_init__(self):
        for name in ("stored_frames", "short_side", "jpeg_quality", "sample_rate", "mp3_bitrate", "version"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"preprocessing recipe: {name} must be a positive integer, got {value!r}")
        if self.short_side > MAX_SHORT_SIDE:
            raise ValueError(f"preprocessing recipe: short_side (the stored frames' shorter side) must be at most "
                             f"{MAX_SHORT_SIDE} pixels, got {self.short_side}")
        if self.jpeg_quality > 100:
            raise ValueError(f"preprocessing recipe: jpeg_quality must be 1..100, got {self.jpeg_quality}")
        if isinstance(self.clip_seconds, bool) or not isinstance(self.clip_seconds, (int, float)) \
                or not self.clip_seconds > 0 or self.clip_seconds != self.clip_seconds:
            raise ValueError(f"preprocessing recipe: clip_seconds must be a positive number, got "
                             f"{self.clip_seconds!r}")
        if self.frame_times != FRAME_TIMES:
            raise ValueError(f"preprocessing recipe: unknown frame_times {self.frame_times!r} "
                             f"(known: {FRAME_TIMES!r})")
        if self.audio_source not in AUDIO_SOURCES:
            raise ValueError(f"preprocessing recipe: unknown audio_source {self.audio_source!r} "
                             f"(known: {', '.join(AUDIO_SOURCES)})")
        if self.version > RECIPE_VERSION:
            raise ValueError(f"preprocessing recipe: version {self.version} is newer than this AVLFormer "
                             f"understands ({RECIPE_VERSION}); upgrade avlformer")

    @classmethod
    def paper(cls) -> "PreprocessRecipe":
        """The recipe of the FAVDBench release and of the released ``model.bin``."""
        return cls()

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "preprocessing recipe") -> "PreprocessRecipe":
        try:
            return cls(**checked_fields(cls, data))
        except ValueError as error:
            raise ValueError(f"{source}: {str(error).removeprefix('preprocessing recipe: ')}") from None

    def differences(self, reference: "PreprocessRecipe", reference_name: str) -> str:
        """What differs from ``reference``, e.g. ``short_side 72 (training data: 256)``; empty when equal."""
        ours, theirs = self.to_dict(), reference.to_dict()
        return ", ".join(f"{key} {ours[key]!r} ({reference_name}: {theirs[key]!r})" for key in ours
                         if ours[key] != theirs[key])

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PreprocessRecipe":
        return cls.from_dict(read_json(path, "preprocessing recipe"), source=str(path))


def recipe_path_for_yaml(yaml_path: str | os.PathLike) -> Path:
    """Where ``prepare`` records the recipe of one prepared split: beside its metadata yaml,
    ``metadata/<split>_<N>frames.yaml`` -> ``metadata/<split>_<N>frames.preprocessor_config.json``."""
    yaml_path = Path(yaml_path)
    return yaml_path.with_name(yaml_path.stem + "." + RECIPE_NAME)


def recipe_for_yaml(yaml_path: str | os.PathLike) -> PreprocessRecipe:
    """The recipe of a prepared split; data without one (the FAVDBench release, data prepared before recipes
    existed) is taken to follow the paper recipe, with a warning naming that assumption."""
    path = recipe_path_for_yaml(yaml_path)
    return _recorded_recipe(path, f"{yaml_path}: no preprocessing recipe ({path.name})")


def recipe_for_checkpoint(folder: str | os.PathLike, *, released: bool = False) -> PreprocessRecipe:
    """The recipe a checkpoint was trained with. ``released``: the released ``model.bin`` and upstream
    checkpoint folders, which follow the paper recipe by construction (no warning)."""
    missing = None if released else f"{folder}: checkpoint has no {RECIPE_NAME} (saved before recipes were recorded)"
    return _recorded_recipe(Path(folder) / RECIPE_NAME, missing)


def _recorded_recipe(path: Path, missing: str | None) -> PreprocessRecipe:
    """The recipe stored at ``path``, else the paper recipe (warning ``missing``, when given, that it is assumed)."""
    if path.is_file():
        return PreprocessRecipe.load(path)
    if missing:
        log.warning("%s; assuming the paper recipe (%d frames, shorter side %d px, %d Hz audio)", missing,
                    STORED_FRAMES, SHORT_SIDE, SAMPLE_RATE)
    return PreprocessRecipe.paper()
