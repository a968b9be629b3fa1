"""Reading videos with PyAV, in-process: probe and uniform frame sampling (audio: ``media_audio``), and the error
types of both (``MediaError``, ``NoAudioStreamError``). Shared by ``prepare`` and inference, so both see the same
pixels. Frame k of n is the frame on screen at ``t0 + (k + 0.5) * D / n`` (``t0``: the first frame's timestamp;
``D``: the stream's span, last timestamp - ``t0`` + one frame duration); resizing and ``skip_frame`` are described
in docs/data.md ("What prepare does", "Speed").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from av.video.reformatter import VideoReformatter

from avlformer.data.file_problems import is_environment_error

# A clip whose consecutive frame intervals differ from the median by more than this fraction is called VFR.
_VFR_TOLERANCE = 0.25
_VFR_MIN_FRACTION = 0.02


class MediaError(ValueError):
    """A media file cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class NoAudioStreamError(MediaError):
    """The file has no (decodable) audio stream; callers substitute silence and warn."""


def raise_if_environment(error: BaseException, path: str | os.PathLike) -> None:
    """A read that failed because of the machine (``file_problems.is_environment_error``: an I/O error, no
    permission, too many open files) is raised as OSError naming the file: never taken for a damaged file."""
    if is_environment_error(error):
        raise OSError(error.errno, error.strerror, str(path)) from None


@dataclass
class VideoInfo:
    width: int
    height: int
    start: float                 # timestamp of the first video frame, seconds
    duration: float              # span of the video stream, seconds (see module docstring)
    variable_frame_rate: bool
    declared_duration: float | None  # what the container header claims (None when it says nothing)
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


@dataclass
class FrameSample:
    frames: np.ndarray           # uint8 (T, H, W, 3) RGB
    num_decoded: int             # frames that decoded successfully
    num_distinct: int            # distinct source frames among the T returned (fewer means repeats)
    decode_errors: int           # packets the decoder rejected (truncated or corrupt data)
    info: VideoInfo


def open_container(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "zero-byte file")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise_if_environment(error, path)
        detail = getattr(error, "strerror", None) or str(error)
        raise MediaError(path, f"not a readable video: {detail} (not a video, or a truncated/corrupt file)") from None


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
    except av.FFmpegError as error:
        raise_if_environment(error, path)
        # truncated file: keep the packets read so far
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
    """Size, span and VFR of a video (demuxes the packets; decodes nothing)."""
    with open_container(path) as container:
        return _probe_open(container, path)[0]


def _probe_open(container, path) -> tuple[VideoInfo, list[av.Packet], av.video.stream.VideoStream]:
    """``probe`` of an open container, with the video packets it demuxed (so a decode needs no second pass) and
    the video stream."""
    if not container.streams.video:
        raise MediaError(path, "no video stream (not a video file)")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    else:
        declared = container.duration / av.time_base if container.duration else None
    packets = _demux_video_packets(container, stream, path)
    if not width or not height:
        raise MediaError(path, "video stream has no frame size")
    times = np.sort(np.asarray([t for p in packets if (t := _packet_time(p)) is not None], dtype=np.float64))
    intervals = np.diff(times)
    positive = intervals[intervals > 0]
    if len(positive):
        frame_duration = float(np.median(positive))
    else:
        rate = stream.average_rate or stream.guessed_rate
        frame_duration = 1.0 / float(rate) if rate else 1.0 / 25.0
    start = float(times[0]) if len(times) else 0.0
    duration = (float(times[-1]) - start + frame_duration) if len(times) else len(packets) * frame_duration
    return VideoInfo(width=width, height=height, start=start, duration=duration,
                     variable_frame_rate=_is_variable_rate(intervals), declared_duration=declared,
                     frame_times=times), packets, stream


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Upstream's rule: scale so the shorter side is ``short_side``; the other side is ``round(r * side)``."""
    ratio = short_side / min(width, height)
    return max(1, round(ratio * width)), max(1, round(ratio * height))


def sample_times(start: float, duration: float, num_frames: int) -> np.ndarray:
    """The ``num_frames`` instants whose on-screen frames are sampled (module docstring)."""
    return start + (np.arange(num_frames) + 0.5) * duration / num_frames


def sampled_packet_times(frame_times: np.ndarray, targets: np.ndarray) -> set[float]:
    """Timestamps of the frames the targets select: for each target the last frame at or before it (the first
    frame for a target before it); the decoder may drop any other frame (docs/data.md, "Speed")."""
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
    of the display matrix; rotating by it gives what ffmpeg's CLI shows. One thread: prepare's workers already
    fill the cores. Passing the clip's one ``reformatter`` reuses its scaler context."""
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
    with open_container(path) as container:
        info, packets, stream = _probe_open(container, path)
        targets = sample_times(info.start, info.duration, num_frames)
        sampled = sampled_packet_times(info.frame_times, targets)
        selector = _FrameSelector(targets, short_side)
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
