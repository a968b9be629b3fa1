"""A clip's audio track with PyAV, in-process: extracted as mono mp3 at the recipe's rate (copied when it already
is one, else resampled and encoded as one piece: docs/data.md, "Speed"), encoded, inspected. Shared by ``prepare``
and inference, so both use the same samples; errors are ``media.MediaError``, one line naming the file.
"""

from __future__ import annotations

import io
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avlformer.data.file_problems import entry_problem
from avlformer.data.media import MediaError, NoAudioStreamError, open_container, raise_if_environment
from avlformer.data.recipe import MP3_BITRATE, SAMPLE_RATE

MP3_QUALITY = 5
# Rates a waveform handed over in memory may be given at (telephone-band recordings up to studio rates), and the
# longest such waveform: it is resampled whole before the model takes its first ``clip_seconds``, so a wrong
# rate (1 Hz for 32 kHz samples) must not turn one second into hours of samples.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 768_000
MAX_WAVEFORM_SECONDS = 600.0


@dataclass
class AudioTrack:
    mp3: bytes                   # mono mp3 at ``sample_rate``
    duration: float              # seconds of decoded source audio
    source_rate: int
    source_channels: int
    decode_errors: int


def waveform_problem(num_samples: int, sample_rate) -> str | None:
    """Why ``num_samples`` samples at ``sample_rate`` cannot be used as a waveform given in memory, or None."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral):
        return f"sample_rate must be a whole number of Hz, got {sample_rate!r}"
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        return f"sample_rate must be {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, got {sample_rate}"
    if num_samples / sample_rate > MAX_WAVEFORM_SECONDS:
        return (f"{num_samples} samples at {sample_rate} Hz are {num_samples / sample_rate:.0f} s of sound, more "
                f"than {MAX_WAVEFORM_SECONDS:.0f} s: is the sample_rate right? (give the clip's own audio)")
    return None


def _encode_mp3(frames, sample_rate: int, bitrate: int, layout: str = "mono") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        # LAME quality 5 (0 best .. 9 fastest): faster than ffmpeg's default 3, inaudible at this bitrate.
        stream = container.add_stream("mp3", rate=sample_rate, layout=layout,
                                      options={"compression_level": str(MP3_QUALITY)})
        stream.bit_rate = bitrate
        for frame in frames:
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def encode_mp3(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, bitrate: int = MP3_BITRATE) -> bytes:
    """float32 samples, shape (samples,) or (channels, samples) with 1 or 2 channels, as mp3 bytes; the encoder
    of every mp3 ``prepare`` and inference write (stereo input exists for building test data)."""
    planar = np.atleast_2d(np.asarray(wave, dtype=np.float32))
    layout = {1: "mono", 2: "stereo"}.get(planar.shape[0])
    if layout is None:
        raise ValueError(f"encode_mp3: {planar.shape[0]} channels; only mono or stereo can be encoded")
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    return _encode_mp3([frame], sample_rate, bitrate, layout)


def downmix(frame: av.AudioFrame, converters: dict) -> np.ndarray:
    """The one downmix of prepare, inference and the loaders: the mean of the channels, as float32 samples at the
    frame's own rate. libswresample's mono mix is not a mean (a stereo file with two identical channels comes
    out about 3 dB louder than its mono source), so the channels are never remixed by it. ``converters`` caches
    sample-format converters across the frames of one stream."""
    if frame.format.name == "fltp":
        planar = frame.to_ndarray()
    else:  # whatever sample format the codec produced -> float32 (channels, samples)
        key = (frame.layout.name, frame.sample_rate)
        if key not in converters:
            # Same layout and rate: libswresample only converts the sample format here, it does not remix.
            converters[key] = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
        planar = np.concatenate([f.to_ndarray() for f in converters[key].resample(frame)], axis=1)
    return planar[0] if planar.shape[0] == 1 else planar.mean(axis=0, dtype=np.float32)


def _resampled_audio(container, stream, sample_rate: int, counters: dict) -> list[av.AudioFrame]:
    """Decoded audio of ``stream``, downmixed, as mono float planar frames at ``sample_rate``. Each run of frames
    at one source rate is resampled as one long frame: same samples as frame by frame, without the per-call cost."""
    converters: dict = {}
    runs: list[tuple[int, list[np.ndarray]]] = []   # (source rate, downmixed chunks)
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.FFmpegError:
            counters["errors"] += 1
            continue
        for frame in frames:
            counters["samples"] += frame.samples
            counters["rate"] = frame.sample_rate
            counters["channels"] = frame.layout.nb_channels
            if not runs or runs[-1][0] != frame.sample_rate:
                runs.append((frame.sample_rate, []))
            # Source gaps (pts jumps) are not kept: the resampler and encoder count samples.
            runs[-1][1].append(downmix(frame, converters))
    resampled = []
    for source_rate, chunks in runs:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)  # mono to mono: rate only
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)[None],
                                           format="fltp", layout="mono")
        frame.sample_rate = source_rate
        resampled += resampler.resample(frame)
        resampled += resampler.resample(None)
    return resampled


def _is_mono_mp3_at(stream, sample_rate: int) -> bool:
    codec = stream.codec_context
    return (codec.codec.name in ("mp3", "mp3float") and stream.rate == sample_rate and codec.layout is not None
            and codec.layout.nb_channels == 1)


def _mp3_stream_copy(container, stream, sample_rate: int, label: str) -> AudioTrack | None:
    """The stream's own mp3 frames (it is mono mp3 at ``sample_rate``), stored as they are: re-encoding would only
    lose quality. None when its frames do not decode as mono mp3 at that rate after all."""
    try:
        data = b"".join(bytes(packet) for packet in container.demux(stream) if packet.size)
        info = inspect_mp3(data, label)
    except (MediaError, av.FFmpegError):
        return None
    if info.sample_rate != sample_rate or info.channels != 1:
        return None
    return AudioTrack(mp3=data, duration=info.duration, source_rate=info.sample_rate, source_channels=1,
                      decode_errors=0)


def extract_audio(source: str | os.PathLike | bytes, sample_rate: int = SAMPLE_RATE,
                  bitrate: int = MP3_BITRATE, name: str | None = None) -> AudioTrack:
    """The first audio stream of ``source`` (a file path or encoded bytes), downmixed to mono (``downmix``),
    resampled to ``sample_rate`` and encoded as mp3; a file's stream that already is mono mp3 at ``sample_rate``
    is copied instead (``_mp3_stream_copy``; bytes are always re-encoded: callers pass bytes to have them
    conformed). Raises NoAudioStreamError when there is no decodable audio."""
    def encode(container, stream, label):
        return _encoded_audio(container, stream, sample_rate, bitrate, label)

    def copy_else_encode(container, stream, label):
        if isinstance(source, bytes) or not _is_mono_mp3_at(stream, sample_rate):
            return encode(container, stream, label)
        copied = _mp3_stream_copy(container, stream, sample_rate, label)
        # The copy attempt read the packets: a stream that is not usable as it is is read again to encode it.
        return copied if copied is not None else _open_audio(source, name, encode)

    return _open_audio(source, name, copy_else_encode)


def _open_audio(source: str | os.PathLike | bytes, name: str | None, read):
    """``read(container, first audio stream, label)`` on ``source`` opened afresh."""
    label = name or (str(source) if not isinstance(source, bytes) else "audio bytes")
    if isinstance(source, bytes):
        if not source:
            raise MediaError(label, "zero-byte file")
        try:
            container = av.open(io.BytesIO(source), mode="r")
        except av.FFmpegError as error:
            raise MediaError(label, f"not readable audio ({error})") from None
    else:
        container = open_container(source)
    with container:
        if not container.streams.audio:
            raise NoAudioStreamError(label, "no audio stream")
        return read(container, container.streams.audio[0], label)


def _encoded_audio(container, stream, sample_rate: int, bitrate: int, label: str) -> AudioTrack:
    counters = {"errors": 0, "samples": 0, "rate": stream.rate or 0, "channels": 0}
    try:
        mp3 = _encode_mp3(_resampled_audio(container, stream, sample_rate, counters), sample_rate, bitrate)
    except av.FFmpegError as error:
        raise_if_environment(error, label)
        raise MediaError(label, f"audio cannot be decoded ({error})") from None
    if counters["samples"] == 0:
        raise NoAudioStreamError(label, "audio stream has no decodable samples")
    return AudioTrack(mp3=mp3, duration=counters["samples"] / max(counters["rate"], 1),
                      source_rate=counters["rate"], source_channels=counters["channels"],
                      decode_errors=counters["errors"])


@dataclass
class Mp3Info:
    sample_rate: int
    channels: int
    duration: float


def mp3_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not an mp3 file that decodes (a folder, a broken link or link loop, empty, not audio),
    or None. A failure of the machine (``file_problems.is_environment_error``) is raised, not returned."""
    problem = entry_problem(path)
    if problem is not None:
        return problem
    try:
        inspect_mp3(Path(path).read_bytes(), str(path))
    except MediaError as error:
        return error.reason
    return None


def inspect_mp3(data: bytes, name: str) -> Mp3Info:
    """Decode mp3 bytes fully to learn their real rate, channels and length (headers can lie)."""
    if not data:
        raise MediaError(name, "zero-byte file")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise MediaError(name, "no audio stream (not an audio file)")
            samples, rate, channels = 0, 0, 0
            for frame in container.decode(audio=0):
                samples += frame.samples
                rate, channels = frame.sample_rate, frame.layout.nb_channels
    except av.FFmpegError as error:
        raise MediaError(name, f"not decodable audio ({error})") from None
    if samples == 0:
        raise MediaError(name, "no decodable audio samples")
    return Mp3Info(sample_rate=rate, channels=channels, duration=samples / rate)

