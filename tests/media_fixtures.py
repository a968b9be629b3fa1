"""Small media files for tests, written with PyAV (no ffmpeg CLI needed).

Frame ``i`` of every generated video is a flat grey of level ``frame_level(i, n)`` with a white square in the
top-left corner, so tests can tell which source frame was sampled and which way up it is. Audio is a sine tone.
Every writer returns the path it wrote, except ``write_tsv``, which returns the row count (TSV containers, such as
frame and caption TSVs, with both index files).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avlformer.data import media_audio
from avlformer.data.tsv import TSVWriter


def frame_level(index: int, num_frames: int) -> int:
    """Grey level of source frame ``index``: spread over 16..240 so h264/JPEG error cannot blur neighbours."""
    return int(round(16 + 224 * index / max(num_frames - 1, 1)))


def frame_image(index: int, num_frames: int, width: int, height: int) -> np.ndarray:
    image = np.full((height, width, 3), frame_level(index, num_frames), np.uint8)
    image[: max(height // 4, 2), : max(width // 4, 2)] = 255
    return image


def tone(seconds: float, sample_rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def write_video(path, *, seconds: float = 1.0, fps: int = 10, width: int = 64, height: int = 48,
                audio: bool = True, sample_rate: int = 32000, channels: int = 1, audio_seconds: float | None = None,
                frame_times: list[float] | None = None, rotation: int = 0) -> Path:
    """h264 video (+ AAC audio unless ``audio=False``). ``frame_times`` (seconds) gives explicit, possibly
    irregular timestamps (variable frame rate); ``rotation`` stores display-matrix rotation metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    times = frame_times if frame_times is not None else [i / fps for i in range(int(round(seconds * fps)))]
    webm = path.suffix == ".webm"  # WebM holds only VP8/VP9 video and Opus/Vorbis audio
    if webm:
        sample_rate = 48000
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libvpx" if webm else "libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = Fraction(1, 1000)
        video.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            video.set_display_rotation(rotation)
        layout = "stereo" if channels == 2 else "mono"
        sound = container.add_stream("libopus" if webm else "aac", rate=sample_rate, layout=layout) if audio else None
        for index, time in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_image(index, len(times), width, height), format="rgb24")
            frame.pts, frame.time_base = int(round(time * 1000)), Fraction(1, 1000)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            wave = tone(audio_seconds if audio_seconds is not None else seconds, sample_rate, channels)
            # libopus takes interleaved samples (one plane), AAC planar.
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave.T.reshape(1, -1) if webm else wave),
                                               format="flt" if webm else "fltp", layout=layout)
            frame.sample_rate, frame.pts = sample_rate, 0
            for packet in sound.encode(frame):
                container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


def write_normal(path, seconds: float = 1.0, fps: int = 40) -> Path:
    """h264 + AAC mono 32 kHz, 64x48, more frames than 32."""
    return write_video(path, seconds=seconds, fps=fps)


def write_no_audio(path) -> Path:
    return write_video(path, fps=40, audio=False)


def write_portrait(path) -> Path:
    return write_video(path, fps=40, width=48, height=80)


def write_tiny(path) -> Path:
    return write_video(path, fps=40, width=32, height=24)


def write_short(path) -> Path:
    """1 s at 8 fps: only 8 frames, fewer than the 32 sampled."""
    return write_video(path, seconds=1.0, fps=8)


def write_stereo_44k(path) -> Path:
    return write_video(path, fps=40, sample_rate=44100, channels=2)


def write_audio_mismatch(path, audio_seconds: float) -> Path:
    """1 s of video with ``audio_seconds`` of audio (shorter or longer than the clip)."""
    return write_video(path, fps=40, audio_seconds=audio_seconds)


def write_vfr(path) -> Path:
    """Variable frame rate: intervals alternate between 20 ms and 60 ms (40 frames over 1.6 s)."""
    times, t = [], 0.0
    for index in range(40):
        times.append(round(t, 3))
        t += 0.02 if index % 2 == 0 else 0.06
    return write_video(path, frame_times=times, seconds=1.6)


def write_rotated(path, rotation: int = 90) -> Path:
    return write_video(path, fps=40, rotation=rotation)


def write_zero_byte(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_truncated(path, keep_fraction: float = 0.5) -> Path:
    """A normal clip cut after ``keep_fraction`` of its bytes (an interrupted download)."""
    path = write_normal(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_not_a_video(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a text file, not a video\n" * 20)
    return path


def write_mp3(path, seconds: float = 1.0, sample_rate: int = 32000, channels: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(media_audio.encode_mp3(tone(seconds, sample_rate, channels, 660.0), sample_rate))
    return path


def write_tsv(path, rows) -> int:
    with TSVWriter(path) as writer:
        for row in rows:
            writer.write(row)
    return writer.num_rows
