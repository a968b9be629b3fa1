"""Audio for the loaders: encoded bytes (the HDF5's mp3s, or any PyAV-readable audio) -> a mono float32 waveform at
the recipe's rate, padded or cut to the clip length, with the train-only augmentations."""

from __future__ import annotations

import io

import av
import numpy as np
import torch

from avlformer.data.media_audio import downmix
from avlformer.data.recipe import SAMPLE_RATE

GAIN_DB_RANGE = (-7, 6)       # inclusive, integer dB (upstream: randint(14) - 7)
ROLL_SAMPLES_RANGE = (-50, 50)  # half-open, samples (upstream: np.random.randint(-50, 50))


def decode_audio(data: bytes | np.ndarray, sample_rate: int = SAMPLE_RATE, source: str = "audio") -> np.ndarray:
    """Decode encoded audio bytes to a mono float32 waveform at ``sample_rate`` (channels averaged by
    ``media_audio.downmix``, resampled when the rate differs; upstream did neither)."""
    payload = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        with av.open(io.BytesIO(payload), mode="r") as container:
            if not container.streams.audio:
                raise ValueError(f"{source}: no audio stream")
            stream = container.streams.audio[0]
            converters: dict = {}
            chunks, rate = [], None
            for frame in container.decode(stream):
                rate = rate or frame.sample_rate
                chunks.append(downmix(frame, converters))
    except av.FFmpegError as error:
        raise ValueError(f"{source}: cannot decode audio ({error})") from None
    if not chunks:
        return np.zeros(0, np.float32)
    wave = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    if rate != sample_rate:
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pieces = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
        wave = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return wave


def pad_or_truncate(wave: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or keep the first ``length`` samples (no random crop, as upstream)."""
    if len(wave) >= length:
        return wave[:length]
    return np.concatenate([wave, np.zeros(length - len(wave), dtype=wave.dtype)])


def load_clip(data: bytes | np.ndarray, *, clip_samples: int, sample_rate: int = SAMPLE_RATE, train: bool = False,
              rng: np.random.Generator | None = None, source: str = "audio") -> torch.Tensor:
    """Encoded bytes -> float32 tensor (1, clip_samples). Gain and roll apply only when ``train`` is true
    (upstream applied the gain at evaluation too, making eval inputs random)."""
    wave = pad_or_truncate(decode_audio(data, sample_rate, source), clip_samples)
    if train:
        if rng is None:
            raise ValueError("load_clip(train=True) needs an rng for its augmentations")
        gain_db = int(rng.integers(GAIN_DB_RANGE[0], GAIN_DB_RANGE[1] + 1))
        wave = np.roll(wave * np.float32(10.0 ** (gain_db / 20.0)), int(rng.integers(*ROLL_SAMPLES_RANGE)))
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).reshape(1, clip_samples)
