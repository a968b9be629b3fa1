"""The built-in demo dataset: layout, real codecs, content matching the attributes, determinism, parsing."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from avlformer.cli import main as cli_main
from avlformer.data import synth


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert cli_main(["synth", "--out", str(out), "--num_train", "4", "--num-val", "1", "--num-test", "2",
                     "--seed", "7", "--workers", "1"]) == 0
    return out


def decode_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(chunks).astype(np.float32), stream.rate


def test_layout_and_codecs(dataset):
    attributes = json.loads((dataset / "attributes.json").read_text())
    captions = json.loads((dataset / "captions.json").read_text())
    assert Counter(a["split"] for a in attributes.values()) == {"train": 4, "val": 1, "test": 2}
    assert set(captions) == set(attributes)
    for clip_id, attrs in attributes.items():
        mp4 = dataset / "videos" / attrs["split"] / f"{clip_id}.mp4"
        mp3 = dataset / "audio_mp3" / attrs["split"] / f"{clip_id}.mp3"
        with av.open(str(mp4)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.streams.audio[0].codec_context.name == "aac"
            seconds = float(container.duration) / av.time_base
        assert 2.0 <= attrs["duration"] <= 10.0
        assert abs(seconds - attrs["duration"]) < 0.3
        with av.open(str(mp3)) as container:
            stream = container.streams.audio[0]
            assert container.format.name == "mp3"
            assert stream.rate == 32000 and stream.codec_context.layout.nb_channels == 1
    assert not list(dataset.rglob("*.tmp")), "atomic writes left temporaries behind"


def test_captions_are_three_sentences_that_parse_back(dataset):
    attributes = json.loads((dataset / "attributes.json").read_text())
    captions = json.loads((dataset / "captions.json").read_text())
    for clip_id, caption in captions.items():
        assert caption.count(". ") == 2 and caption.endswith(".")
        expected = {k: attributes[clip_id][k] for k in (*synth.VISUAL_ATTRIBUTES, *synth.SOUND_ATTRIBUTES)}
        assert synth.parse_attributes(caption) == expected


def test_picture_matches_attributes(dataset):
    attributes = json.loads((dataset / "attributes.json").read_text())
    for clip_id, attrs in attributes.items():
        frames = decode_video(dataset / "videos" / attrs["split"] / f"{clip_id}.mp4").astype(np.int32)
        colour = np.array(synth.COLOURS[attrs["colour"]])
        centres = []
        for frame in (frames[0], frames[-1]):
            hit = np.abs(frame - colour).sum(-1) < 60
            assert hit.sum() > 100, f"{clip_id}: no {attrs['colour']} object found"
            ys, xs = np.nonzero(hit)
            centres.append((xs.mean(), ys.mean()))
        (x0, y0), (x1, y1) = centres
        moved = {"left_to_right": x1 - x0, "right_to_left": x0 - x1, "top_to_bottom": y1 - y0,
                 "bottom_to_top": y0 - y1}[attrs["motion"]]
        assert moved > 30, f"{clip_id}: object does not move {attrs['motion']}"


def test_shape_masks_differ():
    areas = {s: int(synth.shape_mask(s, 64, 48).sum()) for s in synth.SHAPES}
    assert len(set(areas.values())) == len(synth.SHAPES)
    with pytest.raises(ValueError):
        synth.shape_mask("hexagon", 64, 48)


def test_sound_matches_attributes(dataset):
    attributes = json.loads((dataset / "attributes.json").read_text())
    for clip_id, attrs in attributes.items():
        wave, rate = decode_audio(dataset / "audio_mp3" / attrs["split"] / f"{clip_id}.mp3")
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]
        assert abs(peak - synth.PITCHES[attrs["pitch"]]) < 10, f"{clip_id}: peak {peak} Hz"
        # loudness over 50 ms windows: steady for a continuous tone, gated for beeps
        windows = wave[: len(wave) // 1600 * 1600].reshape(-1, 1600)
        rms = np.sqrt((windows**2).mean(1))[2:-2]
        quiet_fraction = float((rms < 0.3 * rms.max()).mean())
        if attrs["rhythm"] == "continuous":
            assert quiet_fraction < 0.05
        else:
            assert 0.2 < quiet_fraction < 0.8


def test_beep_rate_distinguishes_slow_and_fast():
    t = np.arange(32000 * 4) / 32000
    slow, fast = synth.beep_envelope(t, 1.0), synth.beep_envelope(t, 0.25)
    onsets = lambda env: int(((env[1:] > 0.5) & (env[:-1] <= 0.5)).sum())  # noqa: E731
    assert onsets(fast) == 4 * onsets(slow)


def test_deterministic_from_seed(tmp_path, dataset):
    again = synth.synthesize(tmp_path / "again", {"train": 4, "val": 1, "test": 2}, seed=7, workers=2,
                             progress=False)
    assert again["captions"] == json.loads((dataset / "captions.json").read_text())
    clip = "synth_train_00002"
    np.testing.assert_array_equal(decode_video(tmp_path / "again/videos/train" / f"{clip}.mp4"),
                                  decode_video(dataset / "videos/train" / f"{clip}.mp4"))
    other = [synth.make_clip_spec(8, "train", i) for i in range(20)]
    same = [synth.make_clip_spec(7, "train", i) for i in range(20)]
    assert other != same


def test_sound_independent_of_picture():
    specs = [synth.make_clip_spec(0, "train", i) for i in range(3000)]
    for visual in synth.VISUAL_ATTRIBUTES:
        for sound in synth.SOUND_ATTRIBUTES:
            for value in synth.ATTRIBUTE_VALUES[visual]:
                group = [getattr(s, sound) for s in specs if getattr(s, visual) == value]
                share = Counter(group)[synth.ATTRIBUTE_VALUES[sound][0]] / len(group)
                expected = 1 / len(synth.ATTRIBUTE_VALUES[sound])
                assert abs(share - expected) < 0.07, (visual, value, sound, share)


def test_parse_attributes_on_free_text():
    assert synth.parse_attributes("") == dict.fromkeys(("shape", "colour", "motion", "pitch", "rhythm"))
    parsed = synth.parse_attributes("A Blue square moves from bottom to top. a low pitched tone beeps slowly.")
    assert parsed == {"shape": "square", "colour": "blue", "motion": "bottom_to_top", "pitch": "low",
                      "rhythm": "slow"}
    partial = synth.parse_attributes("a green thing moves from left to left. a tone plays continuously.")
    assert partial == {"shape": None, "colour": "green", "motion": None, "pitch": None, "rhythm": "continuous"}


def test_bad_counts_rejected(tmp_path):
    with pytest.raises(ValueError, match="num-test"):
        synth.synthesize(tmp_path, {"train": 1, "test": -1}, progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        synth.synthesize(tmp_path, {"dev": 1}, progress=False)
