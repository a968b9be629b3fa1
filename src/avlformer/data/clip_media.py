"""One clip's media made from raw files exactly as a recipe says: frames as base64 JPEGs (a frame-TSV row) and
audio as mp3 bytes (the HDF5's). Inference builds its inputs from the same bytes with the loaders' functions.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from avlformer.data import media, media_audio
from avlformer.data.recipe import PreprocessRecipe

AUDIO_FROM_MP3, AUDIO_FROM_VIDEO, AUDIO_SILENCE = "mp3", "video", "silence"


def encode_frames(frames: np.ndarray, recipe: PreprocessRecipe) -> list[bytes]:
    """uint8 (T, H, W, 3) -> one base64 JPEG per frame."""
    encoded = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=recipe.jpeg_quality)
        encoded.append(base64.b64encode(buffer.getvalue()))
    return encoded


def frame_row(key: str, frames: np.ndarray, recipe: PreprocessRecipe) -> list[bytes]:
    """One frame-TSV row (docs/upstream.md §1.3): key, the JSON header, one base64 JPEG per frame."""
    height, width = frames.shape[1:3]
    header = json.dumps({"class": -1, "width": int(width), "height": int(height)})
    return [key.encode("utf-8"), header.encode("utf-8")] + encode_frames(frames, recipe)


def read_clip_frames(video: str | os.PathLike, recipe: PreprocessRecipe, threads: int = 0) -> media.FrameSample:
    """The recipe's ``stored_frames`` frames of ``video`` at its ``short_side`` (uint8, with decode counts)."""
    return media.read_frames(video, recipe.stored_frames, recipe.short_side, threads=threads)


@dataclass
class ClipAudio:
    mp3: bytes
    source: str                  # AUDIO_FROM_MP3, AUDIO_FROM_VIDEO or AUDIO_SILENCE
    warnings: list[str] = field(default_factory=list)


def _conforming_mp3(mp3: Path, name: str, recipe: PreprocessRecipe, warnings: list[str]) -> tuple[bytes, float] | None:
    """The clip's own mp3 (stored byte for byte, as the original did) if usable; re-encoded when it is not mono at
    the recipe's rate, which the original's loader assumed without checking. None when unreadable."""
    data = mp3.read_bytes()
    try:
        info = media_audio.inspect_mp3(data, name)
    except media.MediaError as error:
        warnings.append(f"{name} unusable ({error.reason}); audio taken from the video instead")
        return None
    if info.sample_rate == recipe.sample_rate and info.channels == 1:
        return data, info.duration
    track = media_audio.extract_audio(data, recipe.sample_rate, recipe.mp3_bitrate, name=name)
    warnings.append(f"{name} is {info.sample_rate} Hz with {info.channels} channel(s); re-encoded to "
                    f"{recipe.sample_rate} Hz mono")
    return track.mp3, track.duration


def silent_clip_audio(recipe: PreprocessRecipe, warnings: list[str] | None = None) -> ClipAudio:
    """The recipe's silence: ``clip_seconds`` of zeros, mp3 encoded as any other clip audio."""
    silence = media_audio.encode_mp3(np.zeros(recipe.clip_samples, np.float32), recipe.sample_rate, recipe.mp3_bitrate)
    return ClipAudio(silence, AUDIO_SILENCE, warnings or [])


def clip_audio(video: str | os.PathLike, mp3: str | os.PathLike | None, recipe: PreprocessRecipe, *,
               video_seconds: float | None = None, name=str) -> ClipAudio:
    """mp3 bytes for a clip by the recipe's audio rule: its own mp3 file when given and usable, else the video's
    audio stream, else ``clip_seconds`` of silence (each fall-back with a warning). ``name`` turns a path into
    the text used in warnings (e.g. relative to the data folder)."""
    warnings: list[str] = []
    found, source = None, AUDIO_FROM_MP3
    if mp3 is not None:
        found = _conforming_mp3(Path(mp3), name(mp3), recipe, warnings)
    if found is None:
        source = AUDIO_FROM_VIDEO
        try:
            track = media_audio.extract_audio(video, recipe.sample_rate, recipe.mp3_bitrate, name=name(video))
        except media.MediaError as error:
            warnings.append(f"{error.reason}: {recipe.clip_seconds:g} s of silence used instead")
            return silent_clip_audio(recipe, warnings)
        found = (track.mp3, track.duration)
        if track.decode_errors:
            warnings.append(f"{track.decode_errors} corrupt audio packet(s) skipped")
    data, seconds = found
    if video_seconds is not None and abs(seconds - video_seconds) > max(0.5, 0.05 * video_seconds):
        relation = "shorter" if seconds < video_seconds else "longer"
        warnings.append(f"audio ({seconds:.2f} s) is {relation} than the video ({video_seconds:.2f} s)")
    return ClipAudio(data, source, warnings)
