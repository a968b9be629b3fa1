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

Speed (docs/data.md, "Speed"): the file is demuxed once for timestamps and packets together; a packet whose frame
cannot be sampled is decoded with ``skip_frame = NONREF``, so the decoder drops it when no other frame refers to
it (non-reference B-frames, about half of a libx264 stream) and still decodes it when one does; the sampled
frames themselves are always decoded. All conversions share one single-threaded libswscale context. None of this
changes a pixel: the frames are those of a full decode.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from av.video.reformatter import VideoReformatter

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


def _packet_time(packet: av.Packet) -> float | None:
    return float(packet.pts * packet.time_base) if packet.pts is not None else None


def _demux_video_packets(container, stream, path) -> list[av.Packet]:
    """Every video packet (flush packets left out), without decoding anything; a truncated file gives the
    packets read before the damage."""
    packets = []
    try:
        for packet in container.demux(stream):
            if packet.size:
                packets.append(packet)
    except av.FFmpegError:
        pass  # truncated file: keep the packets read so far
    if not packets:
        raise MediaError(path, "no video packets (empty or truncated video)")
    return packets


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
        return _probe_open(container, path)[0]


def _probe_open(container, path) -> tuple[VideoInfo, list[av.Packet]]:
    """``probe`` of an open container, with the video packets it demuxed (so a decode needs no second pass)."""
    stream = _video_stream(container, path)
    width, height = stream.codec_context.width, stream.codec_context.height
    has_audio = bool(container.streams.audio)
    declared = _declared_duration(container, stream)
    packets = _demux_video_packets(container, stream, path)
    times = [_packet_time(packet) for packet in packets]
    return _video_info(path, stream, width, height, has_audio, declared,
                       np.sort(np.asarray([t for t in times if t is not None], dtype=np.float64)),
                       len(packets)), packets


def _video_info(path, stream, width, height, has_audio, declared, times: np.ndarray, count: int) -> VideoInfo:
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


def sampled_packet_times(frame_times: np.ndarray, targets: np.ndarray) -> set[float]:
    """Timestamps of the frames the targets select: for each target the last frame at or before it (the first
    frame for a target before it). Only these frames must come out of the decoder; any other frame may be
    dropped, because dropping a frame the selector never assigns leaves every assignment as it was (a target's
    frame is decoded, and every decoded frame after it is later than the target)."""
    if not len(frame_times):
        return set()
    index = np.searchsorted(frame_times, targets, side="right") - 1
    return {float(frame_times[i]) for i in np.maximum(index, 0)}


class _FrameSelector:
    """Streams decoded frames in presentation order and keeps, for each target time, the frame on screen then.

    A frame is on screen from its timestamp until the next frame's, so each frame is assigned once its successor
    arrives; only chosen frames are converted (the conversion dominates the cost after decoding)."""

    def __init__(self, targets: np.ndarray, short_side: int):
        self.targets = targets
        self.short_side = short_side
        self.reformatter = VideoReformatter()  # one libswscale context for every frame of the clip
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
                image = display_rgb(frame, self.short_side, self.reformatter)
            self.chosen[self.next_target], self.source_of[self.next_target] = image, index
            self.next_target += 1


def display_rgb(frame: av.VideoFrame, short_side: int, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """RGB at display orientation, shorter side ``short_side``. ``frame.rotation`` is the counter-clockwise angle
    of the display matrix; rotating by it gives what ffmpeg's CLI shows (checked against ffmpeg 5.1).

    One thread: libswscale's default would start one per core in every prepare worker, which only oversubscribes
    the cores the workers already fill (its slices give the same pixels either way). Passing the clip's one
    ``reformatter`` reuses its scaler context instead of building one per frame."""
    quarter_turns = (int(round(frame.rotation / 90)) % 4) if frame.rotation else 0
    width, height = frame.width, frame.height
    display_w, display_h = (height, width) if quarter_turns % 2 else (width, height)
    out_w, out_h = resized_size(display_w, display_h, short_side)
    scale_w, scale_h = (out_h, out_w) if quarter_turns % 2 else (out_w, out_h)
    image = (reformatter or VideoReformatter()).reformat(frame, width=scale_w, height=scale_h, format="rgb24",
                                                          interpolation="BILINEAR", threads=1).to_ndarray()
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def read_frames(path: str | os.PathLike, num_frames: int = 32, short_side: int = 256,
                threads: int = 0) -> FrameSample:
    """Decode ``path`` once and return ``num_frames`` frames sampled uniformly in time (module docstring), with
    counts the caller can report (undecodable packets, fewer distinct frames than requested). Frames that cannot
    be sampled are skipped where the codec allows (module docstring), so ``num_decoded`` counts the frames the
    decoder returned and ``decode_errors`` the rejected packets among those it was asked to decode."""
    with _open(path) as container:
        info, packets = _probe_open(container, path)
        targets = sample_times(info.start, info.duration, num_frames)
        sampled = sampled_packet_times(info.frame_times, targets)
        selector = _FrameSelector(targets, short_side)
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        errors = _decode_into(selector, stream, packets, sampled)
    if selector.count == 0:
        raise MediaError(path, "no decodable video frames (truncated or corrupt)")
    return FrameSample(frames=_fill_missing(selector.chosen), num_decoded=selector.count,
                       num_distinct=len(set(selector.source_of) - {-1}), decode_errors=errors, info=info)


def _decode_into(selector: _FrameSelector, stream, packets: list[av.Packet], sampled: set[float]) -> int:
    """Feed ``packets`` (decode order) to ``stream``'s decoder until ``selector`` is done; returns the packets rejected.
    ``skip_frame`` is read when a packet is sent (frame threads copy it then too), so it can change per packet:
    NONREF lets the decoder drop the packet's frame if nothing refers to it, DEFAULT decodes it whatever it is."""
    errors, skipping = 0, False
    drain = av.Packet()  # an empty packet drains the decoder; its time base is what the last frames get
    drain.time_base = stream.time_base
    for packet in packets + [drain]:
        if packet.size:
            skip = _packet_time(packet) is not None and _packet_time(packet) not in sampled
            if skip != skipping:
                stream.codec_context.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
        try:
            frames = stream.decode(packet)
        except av.FFmpegError:
            errors += 1  # truncated or corrupt data: later packets may still decode
            continue
        for frame in frames:
            if frame.pts is not None:
                selector.push(frame)
        if selector.done:
            break
    selector.finish()
    return errors


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


def _resampled_audio(container, stream, sample_rate: int, counters: dict) -> list[av.AudioFrame]:
    """Decoded audio of ``stream``, downmixed (``downmix``), as mono float planar frames at ``sample_rate``.

    Each run of decoded frames at one source rate goes through the resampler, and then the encoder, as one long
    frame: the samples are the same as frame by frame (the resampler's output does not depend on how its input
    is cut, nor the encoder's, which re-cuts its input into 1152-sample frames), but the per-call cost of a few
    hundred small frames, most of the audio time, is gone."""
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
        resampled += resampler.resample(_mono_frame(np.concatenate(chunks), source_rate))
        resampled += resampler.resample(None)
    return resampled


def _is_mono_mp3_at(stream, sample_rate: int) -> bool:
    codec = stream.codec_context
    return (codec.codec.name in ("mp3", "mp3float") and stream.rate == sample_rate and codec.layout is not None
            and codec.layout.nb_channels == 1)


def _mp3_stream_copy(container, stream, sample_rate: int, label: str) -> AudioTrack | None:
    """The stream's own mp3 frames (it is mono mp3 at ``sample_rate``), stored as they are, as a clip's own mp3
    file is: decoding and re-encoding them would only lose quality and cost the mp3 encode, most of the audio
    time. None when its frames do not decode as mono mp3 at that rate after all."""
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
        container = _open(source)
    with container:
        if not container.streams.audio:
            raise NoAudioStreamError(label, "no audio stream")
        return read(container, container.streams.audio[0], label)


def _encoded_audio(container, stream, sample_rate: int, bitrate: int, label: str) -> AudioTrack:
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

