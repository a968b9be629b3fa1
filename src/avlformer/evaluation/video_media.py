"""Frames and audio of the clips being scored, for AudioScore and CLIPScore.

Clips are raw videos in one folder (``--video-dir``, e.g. FAVDBench's ``videos/test``), found by the clip id of
the caption id (``clip_ids.clip_id_from_key``: ``test/abc.mp4`` and ``abc`` both find ``abc.mp4``). Audio comes
from ``--audio-dir/<id>.mp3`` when given (FAVDBench's separate mp3s), else from the video's own audio track. Decoding is ``avlformer.data.media`` /
``avlformer.data.audio``, so the scored pixels and samples are those ``prepare`` and inference see.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from avlformer.data.audio import decode_audio
from avlformer.data.clip_ids import VIDEO_EXTENSIONS, clip_id_from_key
from avlformer.data.media import extract_audio_mp3, sample_frames
from avlformer.data.recipe import SAMPLE_RATE, SHORT_SIDE, STORED_FRAMES

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
                 num_frames: int = STORED_FRAMES, short_side: int = SHORT_SIDE, sample_rate: int = SAMPLE_RATE):
        self.video_dir = Path(video_dir)
        self.audio_dir = Path(audio_dir) if audio_dir is not None else None
        for folder in (self.video_dir, self.audio_dir):
            if folder is not None and not folder.is_dir():
                raise NotADirectoryError(f"{folder}: not a directory")
        self.num_frames = num_frames
        self.short_side = short_side
        self.sample_rate = sample_rate

    def video_path(self, image_id: str) -> Path:
        return _find(self.video_dir, clip_id_from_key(image_id), VIDEO_EXTENSIONS, "video", image_id)

    def frames(self, image_id: str) -> np.ndarray:
        """uint8 (num_frames, H, W, 3), sampled uniformly over the clip."""
        return sample_frames(self.video_path(image_id), self.num_frames, self.short_side)

    def audio(self, image_id: str) -> np.ndarray:
        """Mono float32 waveform at ``sample_rate``, whole clip."""
        if self.audio_dir is not None:
            path = _find(self.audio_dir, clip_id_from_key(image_id), AUDIO_SUFFIXES, "audio", image_id)
            return decode_audio(path.read_bytes(), self.sample_rate, source=str(path))
        video = self.video_path(image_id)
        return decode_audio(extract_audio_mp3(video, self.sample_rate), self.sample_rate, source=str(video))
