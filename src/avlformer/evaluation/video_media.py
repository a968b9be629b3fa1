"""Frames and audio of the clips being scored, for AudioScore and CLIPScore.

Videos are found in ``--video-dir`` by the clip id of the caption id; audio comes from ``--audio-dir/<id>.mp3`` or
the video's own track. Media are made by ``data/clip_media.py`` under ``--recipe`` (default: the paper's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import dataclasses

from avlformer.data.audio import decode_audio
from avlformer.data.clip_ids import VIDEO_EXTENSIONS, clip_id_from_key
from avlformer.data.clip_media import AUDIO_SILENCE, clip_audio, read_clip_frames
from avlformer.data.media import MediaError
from avlformer.data.recipe import PreprocessRecipe

AUDIO_SUFFIXES = (".mp3", ".wav", ".flac", ".m4a", ".aac", ".ogg")


class MissingMedia(LookupError):
    """No video (or audio) file for an id; the message names the id and the folder searched."""


def _find(folder: Path, stem: str, suffixes: tuple[str, ...], what: str, image_id: str) -> Path:
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise MissingMedia(f"no {what} for id {image_id!r} in {folder} (looked for {stem}{{{','.join(suffixes)}}})")


class ClipMedia:
    def __init__(self, video_dir: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                 recipe: PreprocessRecipe | None = None, num_frames: int | None = None):
        """``num_frames`` (default: the recipe's stored frames) is how many frames the metrics see per clip."""
        self.video_dir = Path(video_dir)
        self.audio_dir = Path(audio_dir) if audio_dir is not None else None
        for folder in (self.video_dir, self.audio_dir):
            if folder is not None and not folder.is_dir():
                raise NotADirectoryError(f"{folder}: not a directory")
        recipe = recipe or PreprocessRecipe.paper()
        self.recipe = recipe if num_frames is None else dataclasses.replace(recipe, stored_frames=num_frames)

    def video_path(self, image_id: str) -> Path:
        return _find(self.video_dir, clip_id_from_key(image_id), VIDEO_EXTENSIONS, "video", image_id)

    def frames(self, image_id: str) -> np.ndarray:
        """uint8 (num_frames, H, W, 3), sampled uniformly over the clip at the recipe's shorter side."""
        return read_clip_frames(self.video_path(image_id), self.recipe).frames

    def audio(self, image_id: str) -> np.ndarray:
        """Mono float32 waveform at the recipe's sample rate, whole clip."""
        rate = self.recipe.sample_rate
        if self.audio_dir is not None:
            path = _find(self.audio_dir, clip_id_from_key(image_id), AUDIO_SUFFIXES, "audio", image_id)
            if path.suffix.lower() != ".mp3":  # not a FAVDBench mp3: decoded as it is, resampled to the rate
                return decode_audio(path.read_bytes(), rate, source=str(path))
            return self._decoded(self.video_path(image_id), path)
        return self._decoded(self.video_path(image_id), None)

    def _decoded(self, video: Path, mp3: Path | None) -> np.ndarray:
        made = clip_audio(video, mp3, self.recipe)
        if made.source == AUDIO_SILENCE:  # the recipe's silence stands in for a model input, not for a score
            raise MediaError(video, "no usable audio (" + "; ".join(made.warnings) + ")")
        return decode_audio(made.mp3, self.recipe.sample_rate, source=str(mp3 or video))
