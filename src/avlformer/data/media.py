"""Reading videos with PyAV, in-process: probe, uniform frame sampling, audio extraction to mp3.

Shared by ``avlformer prepare`` (raw clips -> frame TSV + audio HDF5) and inference (a video file -> model input),
so both see exactly the same pixels and samples.

Frame sampling rule (``sample_frames``): let ``t0`` be the first video frame's timestamp and ``D`` the video
stream's span (last frame timestamp - ``t0`` + one frame duration). Frame ``k`` of ``n`` is the frame on screen
at ``t0 + (k + 0.5) * D / n``, i.e. the last frame whose timestamp is <= that time. This is what upstream's
``ffmpeg -vf fps=n/duration`` (rounding to nearest) selects, but it always yields exactly ``n`` frames (ffmpeg
gave 31 to 33) and works from real timestamps, so variable-frame-rate clips are sampled uniformly in time.
Each selected frame is converted to RGB and resized in one libswscale call (bilinear) so that its shorter side
is ``short_side``, with the other side ``round(r * side)`` as upstream. Rotation metadata is applied (ffmpeg's
CLI auto-rotates too).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from avlformer.data.recipe import CLIP_SECONDS, MP3_BITRATE, SAMPLE_RATE

MP3_QUALITY = 5
# A clip whose consecutive frame intervals differ from the median by more than this fraction is called VFR.
_VFR_TOLERANCE = 0.25
_VFR_MIN_FRACTION = 0.02


class MediaError(ValueError):
    """A media file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class NoAudioStreamError(MediaError):
    """The file has no (decodable) audio stream; callers substitute silence and warn."""


@dataclass
class VideoInfo:
    path: str
    width: int
    height: int
    start: float                 # timestamp of the first video frame, seconds
    duration: float              # span of the video stream, seconds (see module docstring)
    num_packets: int             # video packets demuxed (= frames for every common codec)
    fps: float                   # frames per second over the span
    variable_frame_rate: bool
    has_audio: bool
    declared_duration: float | None  # what the container header claims (None when it says nothing)
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


@dataclass
class FrameSample:
    frames: np.ndarray           # uint8 (T, H, W, 3) RGB
    num_decoded: int             # frames that decoded successfully
    num_distinct: int            # distinct source frames among the T returned (fewer means repeats)
    decode_errors: int           # packets the decoder rejected (truncated or corrupt data)
    info: VideoInfo


@dataclass
class AudioTrack:
    mp3: bytes                   # mono mp3 at ``sample_rate``
    duration: float              # seconds of decoded source audio
    source_rate: int
    source_channels: int
    decode_errors: int


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "zero-byte file")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        detail = getattr(error, "strerror", None) or str(error)
        raise MediaError(path, f"not a readable video: {detail} (not a video, or a truncated/corrupt file)") from None


def _video_stream(container, path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(path, "no video stream (not a video file)")
    return container.streams.video[0]


def _demux_video_times(container, stream, path) -> tuple[np.ndarray, int]:
    """Presentation times (seconds, sorted) of every video packet, without decoding anything."""
    times = []
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet
            count += 1
            if packet.pts is not None:
                times.append(float(packet.pts * packet.time_base))
    except av.FFmpegError:
        pass  # truncated file: keep the packets read so far
    if count == 0:
        raise MediaError(path, "no video packets (empty or truncated video)")
    return np.sort(np.asarray(times, dtype=np.float64)), count


def _is_variable_rate(intervals: np.ndarray) -> bool:
    intervals = intervals[intervals > 0]
    if len(intervals) < 3:
        return False
    median = float(np.median(intervals))
    irregular = np.abs(intervals - median) > _VFR_TOLERANCE * median
    return bool(irregular.mean() > _VFR_MIN_FRACTION)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, span, frame rate, VFR and audio presence of a video (demuxes the packets; decodes nothing)."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        width, height = stream.codec_context.width, stream.codec_context.height
        has_audio = bool(container.streams.audio)
        declared = _declared_duration(container, stream)
        times, count = _demux_video_times(container, stream, path)
    if not width or not height:
        raise MediaError(path, "video stream has no frame size")
    intervals = np.diff(times)
    positive = intervals[intervals > 0]
    if len(positive):
        frame_duration = float(np.median(positive))
    else:
        rate = stream.average_rate or stream.guessed_rate
        frame_duration = 1.0 / float(rate) if rate else 1.0 / 25.0
    start = float(times[0]) if len(times) else 0.0
    duration = (float(times[-1]) - start + frame_duration) if len(times) else count * frame_duration
    return VideoInfo(path=str(path), width=width, height=height, start=start, duration=duration,
                     num_packets=count, fps=count / duration if duration > 0 else 0.0,
                     variable_frame_rate=_is_variable_rate(intervals), has_audio=has_audio,
                     declared_duration=declared, frame_times=times)


def _declared_duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Upstream's rule: scale so the shorter side is ``short_side``; the other side is ``round(r * side)``."""
    ratio = short_side / min(width, height)
    return max(1, round(ratio * width)), max(1, round(ratio * height))


def sample_times(start: float, duration: float, num_frames: int) -> np.ndarray:
    """The ``num_frames`` instants whose on-screen frames are sampled (module docstring)."""
    return start + (np.arange(num_frames) + 0.5) * duration / num_frames


class _FrameSelector:
    """Streams decoded frames in presentation order and keeps, for each target time, the frame on screen then.

    A frame is on screen from its timestamp until the next frame's, so each frame is assigned once its successor
    arrives; only chosen frames are converted (the conversion dominates the cost after decoding)."""

    def __init__(self, targets: np.ndarray, short_side: int):
        self.targets = targets
        self.short_side = short_side
        self.chosen: list[np.ndarray | None] = [None] * len(targets)
        self.source_of = [-1] * len(targets)
        self.next_target = 0
        self.pending: tuple[int, av.VideoFrame] | None = None
        self.count = 0

    @property
    def done(self) -> bool:
        return self.next_target >= len(self.targets)

    def push(self, frame: av.VideoFrame) -> None:
        if self.pending is not None:
            self._assign(float(frame.pts * frame.time_base))
        self.pending = (self.count, frame)
        self.count += 1

    def finish(self) -> None:
        if self.pending is not None:
            self._assign(math.inf)

    def _assign(self, until: float) -> None:
        index, frame = self.pending
        image = None
        while not self.done and self.targets[self.next_target] < until:
            if image is None:
                image = display_rgb(frame, self.short_side)
            self.chosen[self.next_target], self.source_of[self.next_target] = image, index
            self.next_target += 1


def display_rgb(frame: av.VideoFrame, short_side: int) -> np.ndarray:
    """RGB at display orientation, shorter side ``short_side``. ``frame.rotation`` is the counter-clockwise angle
    of the display matrix; rotating by it gives what ffmpeg's CLI shows (checked against ffmpeg 5.1)."""
    quarter_turns = (int(round(frame.rotation / 90)) % 4) if frame.rotation else 0
    width, height = frame.width, frame.height
    display_w, display_h = (height, width) if quarter_turns % 2 else (width, height)
    out_w, out_h = resized_size(display_w, display_h, short_side)
    scale_w, scale_h = (out_h, out_w) if quarter_turns % 2 else (out_w, out_h)
    image = frame.reformat(width=scale_w, height=scale_h, format="rgb24", interpolation="BILINEAR").to_ndarray()
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def read_frames(path: str | os.PathLike, num_frames: int = 32, short_side: int = 256,
                threads: int = 0, info: VideoInfo | None = None) -> FrameSample:
    """Decode ``path`` once and return ``num_frames`` frames sampled uniformly in time (module docstring), with
    counts the caller can report (undecodable packets, fewer distinct frames than requested)."""
    info = info or probe(path)
    selector = _FrameSelector(sample_times(info.start, info.duration, num_frames), short_side)
    errors = 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                errors += 1  # truncated or corrupt data: later packets may still decode
                continue
            for frame in frames:
                if frame.pts is not None:
                    selector.push(frame)
            if selector.done:
                break
        selector.finish()
    if selector.count == 0:
        raise MediaError(path, "no decodable video frames (truncated or corrupt)")
    return FrameSample(frames=_fill_missing(selector.chosen), num_decoded=selector.count,
                       num_distinct=len(set(selector.source_of) - {-1}), decode_errors=errors, info=info)


def _fill_missing(chosen: list[np.ndarray | None]) -> np.ndarray:
    """Slots no frame reached (e.g. targets before the first decodable frame) repeat the previous frame, or the
    next one at the start, as upstream padded missing frames."""
    first = next(image for image in chosen if image is not None)
    filled, last = [], first
    for image in chosen:
        last = image if image is not None else last
        filled.append(last)
    return np.stack(filled)


def sample_frames(path: str | os.PathLike, num_frames: int = 32, short_side: int = 256,
                  threads: int = 0) -> np.ndarray:
    """``num_frames`` RGB frames (uint8, (T, H, W, 3)) uniformly over the clip, shorter side ``short_side``."""
    return read_frames(path, num_frames, short_side, threads).frames


def _encode_mp3(frames, sample_rate: int, bitrate: int, layout: str = "mono") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as container:
        # LAME quality 5 (0 best .. 9 fastest): ~1.5x faster than ffmpeg's default 3, inaudible at this bitrate.
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


def silent_mp3(seconds: float = CLIP_SECONDS, sample_rate: int = SAMPLE_RATE, bitrate: int = MP3_BITRATE) -> bytes:
    return encode_mp3(np.zeros(int(round(seconds * sample_rate)), np.float32), sample_rate, bitrate)


def _float_planar(frame: av.AudioFrame, converters: dict) -> np.ndarray:
    """One decoded frame as float32 (channels, samples), whatever sample format the codec produced."""
    if frame.format.name != "fltp":
        key = (frame.layout.name, frame.sample_rate)
        if key not in converters:
            # Same layout and rate: libswresample only converts the sample format here, it does not remix.
            converters[key] = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=frame.sample_rate)
        return np.concatenate([f.to_ndarray() for f in converters[key].resample(frame)], axis=1)
    return frame.to_ndarray()


def downmix(frame: av.AudioFrame, converters: dict) -> np.ndarray:
    """The one downmix of prepare, inference and the loaders: the mean of the channels, as float32 samples at the
    frame's own rate. libswresample's mono mix is not a mean (a stereo file with two identical channels comes
    out about 3 dB louder than its mono source), so the channels are never remixed by it. ``converters`` caches
    sample-format converters across the frames of one stream."""
    planar = _float_planar(frame, converters)
    return planar[0] if planar.shape[0] == 1 else planar.mean(axis=0, dtype=np.float32)


def _mono_frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None], format="fltp",
                                       layout="mono")
    frame.sample_rate = sample_rate
    return frame


def _resampled_audio(container, stream, sample_rate: int, counters: dict):
    """Decoded audio frames of ``stream``, downmixed, as mono float planar frames at ``sample_rate``."""
    converters: dict = {}
    resampler, source_rate = None, None  # mono to mono: the resampler only changes the rate
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
            if frame.sample_rate != source_rate:
                if resampler is not None:
                    yield from resampler.resample(None)
                resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
                source_rate = frame.sample_rate
            # The new frame has no pts: the resampler and encoder count samples; source gaps are not worth keeping.
            yield from resampler.resample(_mono_frame(downmix(frame, converters), frame.sample_rate))
    if resampler is not None:
        yield from resampler.resample(None)


def extract_audio(source: str | os.PathLike | bytes, sample_rate: int = SAMPLE_RATE,
                  bitrate: int = MP3_BITRATE, name: str | None = None) -> AudioTrack:
    """The first audio stream of ``source`` (a file path or encoded bytes), downmixed to mono (``downmix``),
    resampled to ``sample_rate`` and encoded as mp3. Raises NoAudioStreamError when there is no decodable audio."""
    label = name or (str(source) if not isinstance(source, bytes) else "audio bytes")
    if isinstance(source, bytes):
        if not source:
            raise MediaError(label, "zero-byte file")
        try:
            container = av.open(io.BytesIO(source), mode="r")
        except av.FFmpegError as error:
            raise MediaError(label, f"not readable audio ({error})") from None
    else:
        container = _open(source)
    with container:
        if not container.streams.audio:
            raise NoAudioStreamError(label, "no audio stream")
        stream = container.streams.audio[0]
        counters = {"errors": 0, "samples": 0, "rate": stream.rate or 0, "channels": 0}
        try:
            mp3 = _encode_mp3(_resampled_audio(container, stream, sample_rate, counters), sample_rate, bitrate)
        except av.FFmpegError as error:
            raise MediaError(label, f"audio cannot be decoded ({error})") from None
    if counters["samples"] == 0:
        raise NoAudioStreamError(label, "audio stream has no decodable samples")
    return AudioTrack(mp3=mp3, duration=counters["samples"] / max(counters["rate"], 1),
                      source_rate=counters["rate"], source_channels=counters["channels"],
                      decode_errors=counters["errors"])


def extract_audio_mp3(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Mono mp3 bytes at ``sample_rate`` from the video's own audio (NoAudioStreamError when it has none)."""
    return extract_audio(path, sample_rate).mp3


@dataclass
class Mp3Info:
    sample_rate: int
    channels: int
    duration: float


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

