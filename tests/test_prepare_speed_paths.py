"""prepare's fast paths give exactly what a plain decode gives: the same frames (skipping unsampled non-reference
frames, one shared single-threaded scaler, one demux pass), the same mp3 bytes (audio resampled and encoded in one
piece), the same frame-TSV row bytes.

The references below are written out independently: every packet decoded, every frame converted by a fresh
``frame.reformat`` (PyAV's default, multi-threaded scaler), audio resampled and encoded frame by frame.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

import media_fixtures as mf
from avlformer.data import clip_media, media, media_audio
from avlformer.data.recipe import MP3_BITRATE, SAMPLE_RATE, PreprocessRecipe


def write_moving_texture(path, *, frames: int = 75, fps: int = 25, width: int = 128, height: int = 96,
                         seed: int = 0):
    """Camera-like content (a panned random texture with a moving block): libx264's defaults then emit B-frames,
    some of them non-reference, which is what the skipping path acts on."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = texture[index // 2: index // 2 + height, index: index + width].copy()
            x = (5 * index) % (width - 20)
            image[10:30, x:x + 20] = (255, 40, 40)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
    return path


def reference_frames(path, num_frames: int, short_side: int) -> np.ndarray:
    """Every packet decoded; target k gets the last frame at or before t0 + (k + 1/2) D / n (the first frame for
    a target before it); each chosen frame converted with a fresh default ``frame.reformat``."""
    info = media.probe(path)
    targets = info.start + (np.arange(num_frames) + 0.5) * info.duration / num_frames
    decoded = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            decoded.append((float(frame.pts * frame.time_base), frame))
    decoded.sort(key=lambda pair: pair[0])
    times = np.array([t for t, _ in decoded])
    chosen = []
    for target in targets:
        frame = decoded[max(0, int(np.searchsorted(times, target, side="right")) - 1)][1]
        turns = (int(round(frame.rotation / 90)) % 4) if frame.rotation else 0
        display = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        out_w, out_h = media.resized_size(*display, short_side)
        size = (out_h, out_w) if turns % 2 else (out_w, out_h)
        image = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BILINEAR").to_ndarray()
        chosen.append(np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image)
    return np.stack(chosen)


def count_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("threads", [1, 2])
def test_skipping_unsampled_frames_gives_the_frames_of_a_full_decode(tmp_path, threads):
    path = write_moving_texture(tmp_path / "texture.mp4")
    sample = media.read_frames(path, 16, 64, threads=threads)
    assert np.array_equal(sample.frames, reference_frames(path, 16, 64))
    assert sample.num_distinct == 16 and sample.decode_errors == 0
    # The decoder really dropped frames (non-reference B-frames nobody samples), else this path is not exercised.
    assert sample.num_decoded < count_frames(path)


@pytest.mark.parametrize("writer", [mf.write_vfr, mf.write_rotated, mf.write_portrait, mf.write_short])
def test_fast_path_matches_a_full_decode_on_awkward_clips(tmp_path, writer):
    path = writer(tmp_path / "clip.mp4")
    assert np.array_equal(media.read_frames(path, 32, 64).frames, reference_frames(path, 32, 64))


def test_fast_path_matches_a_full_decode_on_vp8(tmp_path):
    path = mf.write_video(tmp_path / "clip.webm", seconds=1.5, fps=20)
    assert np.array_equal(media.read_frames(path, 12, 48).frames, reference_frames(path, 12, 48))


def test_sampled_packet_times_are_the_frames_on_screen_at_the_targets():
    times = np.array([0.0, 0.1, 0.2, 0.3])
    assert media.sampled_packet_times(times, np.array([-0.5, 0.05, 0.1, 0.29, 7.0])) == {0.0, 0.1, 0.2, 0.3}
    assert media.sampled_packet_times(times, np.array([0.15, 0.19])) == {0.1}


def test_frame_row_bytes_match_jpegs_of_the_reference_frames(tmp_path):
    path = write_moving_texture(tmp_path / "texture.mp4", seed=3)
    recipe = PreprocessRecipe(stored_frames=8, short_side=64)
    row = clip_media.frame_row("train/texture.mp4", clip_media.read_clip_frames(path, recipe).frames, recipe)
    expected = clip_media.frame_row("train/texture.mp4", reference_frames(path, 8, 64), recipe)
    assert row == expected


def reference_mp3(source, sample_rate: int = SAMPLE_RATE, bitrate: int = MP3_BITRATE) -> bytes:
    """The audio rule done frame by frame: each decoded frame downmixed (channel mean), resampled and encoded."""
    with av.open(str(source)) as container:
        out = io.BytesIO()
        with av.open(out, mode="w", format="mp3") as sink:
            stream = sink.add_stream("mp3", rate=sample_rate, layout="mono",
                                     options={"compression_level": str(media_audio.MP3_QUALITY)})
            stream.bit_rate = bitrate
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)

            def encode(frames):
                for frame in frames:
                    for packet in stream.encode(frame):
                        sink.mux(packet)

            for frame in container.decode(audio=0):
                planar = frame.to_ndarray().astype(np.float32)
                mono = planar[0] if planar.shape[0] == 1 else planar.mean(axis=0, dtype=np.float32)
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono)[None], format="fltp", layout="mono")
                piece.sample_rate = frame.sample_rate
                encode(resampler.resample(piece))
            encode(resampler.resample(None))
            encode([None])
    return out.getvalue()


@pytest.mark.parametrize("writer", [mf.write_stereo_44k, mf.write_normal])
def test_audio_in_one_piece_gives_the_mp3_bytes_of_frame_by_frame(tmp_path, writer):
    path = writer(tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"  # planar float: no format conversion
    track = media_audio.extract_audio(path)
    assert track.mp3 == reference_mp3(path)
    assert track.decode_errors == 0 and track.duration > 0.9


def test_reencoding_a_given_stereo_44k_mp3_matches_frame_by_frame(tmp_path):
    """A clip's own mp3 that is not mono 32 kHz is re-encoded from its bytes (clip_media._conforming_mp3)."""
    path = mf.write_mp3(tmp_path / "clip.mp3", seconds=1.5, sample_rate=44100, channels=2)
    assert media_audio.extract_audio(path.read_bytes()).mp3 == reference_mp3(path)


def write_video_with_mp3_audio(path, sample_rate: int, channels: int = 1):
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        layout = "mono" if channels == 1 else "stereo"
        audio = container.add_stream("mp3", rate=sample_rate, layout=layout)
        for index in range(10):
            frame = av.VideoFrame.from_ndarray(mf.frame_image(index, 10, 64, 48), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        wave = av.AudioFrame.from_ndarray(np.ascontiguousarray(mf.tone(1.0, sample_rate, channels)), format="fltp",
                                          layout=layout)
        wave.sample_rate = sample_rate
        for packet in audio.encode(wave):
            container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    return path


def test_mono_mp3_audio_at_the_recipe_rate_is_copied_not_reencoded(tmp_path):
    path = write_video_with_mp3_audio(tmp_path / "mp3audio.mp4", SAMPLE_RATE)
    with av.open(str(path)) as container:
        frames = b"".join(bytes(p) for p in container.demux(audio=0) if p.size)
    track = media_audio.extract_audio(path)
    assert track.mp3 == frames                       # the stream's own mp3 frames, byte for byte
    assert media_audio.inspect_mp3(track.mp3, "x").sample_rate == SAMPLE_RATE and track.source_channels == 1
    assert abs(track.duration - 1.0) < 0.1


@pytest.mark.parametrize("rate, channels", [(44100, 1), (SAMPLE_RATE, 2)])
def test_mp3_audio_at_another_rate_or_stereo_is_reencoded(tmp_path, rate, channels):
    path = write_video_with_mp3_audio(tmp_path / "mp3audio.mp4", rate, channels)
    track = media_audio.extract_audio(path)
    assert track.mp3 == reference_mp3(path)
    assert track.source_rate == rate and track.source_channels == channels
