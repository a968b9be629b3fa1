"""Audio for the loaders: mp3 (or any PyAV-readable) bytes -> mono float32 at 32 kHz, clip length, train-only
augmentation, and the per-split HDF5 of raw mp3 bytes (``audio_hdf/<split>_mp3.hdf``, FACTS §1.4)."""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import av
import h5py
import numpy as np
import torch

from avlformer.data.per_process import PerProcessHandle

SAMPLE_RATE = 32000
GAIN_DB_RANGE = (-7, 6)       # inclusive, integer dB (upstream: randint(14) - 7)
ROLL_SAMPLES_RANGE = (-50, 50)  # half-open, samples (upstream: np.random.randint(-50, 50))


def _to_float_planar(frame: av.AudioFrame, converters: dict) -> np.ndarray:
    """One decoded frame as float32 (channels, samples), whatever sample format the codec produced."""
    if frame.format.name != "fltp":
        key = (frame.layout.name, frame.sample_rate)
        if key not in converters:
            # Same layout and rate: libswresample only converts the sample format here, it does not remix.
            converters[key] = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
        return np.concatenate([f.to_ndarray() for f in converters[key].resample(frame)], axis=1)
    return frame.to_ndarray()


def _resample_mono(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
    frame.sample_rate = source_rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
    pieces = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pieces += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def decode_audio(data: bytes | np.ndarray, sample_rate: int = SAMPLE_RATE, source: str = "audio") -> np.ndarray:
    """Decode encoded audio bytes to a mono float32 waveform at ``sample_rate``.

    Upstream flattened multi-channel frames channel after channel and never resampled, so a stereo or 44.1 kHz
    file came out twice as long / at the wrong pitch. We downmix by averaging channels (not libswresample's
    -3 dB centre mix, so a mono signal duplicated on both channels is unchanged) and resample with
    ``av.AudioResampler`` when the rate differs."""
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
                planar = _to_float_planar(frame, converters)
                chunks.append(planar[0] if planar.shape[0] == 1 else planar.mean(axis=0))
    except av.FFmpegError as error:
        raise ValueError(f"{source}: cannot decode audio ({error})") from None
    if not chunks:
        return np.zeros(0, np.float32)
    wave = np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    if rate != sample_rate:
        wave = _resample_mono(wave, rate, sample_rate)
    return wave


def pad_or_truncate(wave: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end or keep the first ``length`` samples (no random crop, as upstream)."""
    if len(wave) >= length:
        return wave[:length]
    return np.concatenate([wave, np.zeros(length - len(wave), dtype=wave.dtype)])


def random_gain(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain_db = int(rng.integers(GAIN_DB_RANGE[0], GAIN_DB_RANGE[1] + 1))
    return wave * np.float32(10.0 ** (gain_db / 20.0))


def random_roll(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.roll(wave, int(rng.integers(*ROLL_SAMPLES_RANGE)))


def load_clip(data: bytes | np.ndarray, *, clip_samples: int, sample_rate: int = SAMPLE_RATE, train: bool = False,
              rng: np.random.Generator | None = None, gain: bool = True, roll: bool = True,
              source: str = "audio") -> torch.Tensor:
    """Encoded bytes -> float32 tensor (1, clip_samples). Gain and roll apply only when ``train`` is true
    (upstream applied the gain at evaluation too, making eval inputs random)."""
    wave = pad_or_truncate(decode_audio(data, sample_rate, source), clip_samples)
    if train and (gain or roll):
        if rng is None:
            raise ValueError("load_clip(train=True) needs an rng for its augmentations")
        if gain:
            wave = random_gain(wave, rng)
        if roll:
            wave = random_roll(wave, rng)
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).reshape(1, clip_samples)


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
    """Reader of ``<split>_mp3.hdf``: ``audio_name`` (vlen str) and ``mp3`` (vlen uint8 raw file bytes).

    The h5py handle is opened on first use in each process (h5py handles must not cross a fork)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: audio HDF5 file not found")
        self._file = PerProcessHandle(functools.partial(_open_audio_hdf5, self.path))
        self._names: list[str] | None = None

    def _open(self) -> h5py.File:
        return self._file.get()

    def names(self) -> list[str]:
        if self._names is None:
            self._names = [str(name) for name in self._open()["audio_name"].asstr()[:]]
        return self._names

    def __len__(self) -> int:
        return len(self._open()["mp3"])

    def name(self, index: int) -> str:
        return self.names()[index]

    def mp3(self, index: int) -> np.ndarray:
        """Raw encoded bytes of row ``index`` as a uint8 array."""
        return np.asarray(self._open()["mp3"][index], dtype=np.uint8)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "HDF5AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_mp3(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, bitrate: int = 128_000) -> bytes:
    """Encode float32 samples, shape (samples,) or (channels, samples), to mp3 bytes (used to build test and
    benchmark data, and silence for videos without audio)."""
    planar = np.atleast_2d(np.asarray(wave, dtype=np.float32))
    layout = {1: "mono", 2: "stereo"}.get(planar.shape[0])
    if layout is None:
        raise ValueError(f"encode_mp3: {planar.shape[0]} channels; only mono or stereo can be encoded")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        stream = container.add_stream("mp3", rate=sample_rate, layout=layout)
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
