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
        for frame in frames:
            hit = np.abs(frame - colour).sum(-1) < 60
            assert hit.sum() > 100, f"{clip_id}: no {attrs['colour']} object found"
            ys, xs = np.nonzero(hit)
            centres.append((xs.mean(), ys.mean()))
            # always inside the central square the loaders' centre crop keeps
            assert xs.min() >= (synth.WIDTH - synth.HEIGHT) / 2 - 1 and xs.max() <= (synth.WIDTH + synth.HEIGHT) / 2
        xs, ys = np.array(centres).T
        spread = (xs.max() - xs.min() > 30, ys.max() - ys.min() > 30)
        still = (xs.max() - xs.min() < 3, ys.max() - ys.min() < 3)
        expected = {"side_to_side": spread[0] and still[1], "up_and_down": spread[1] and still[0],
                    "circling": spread[0] and spread[1], "still": still[0] and still[1]}
        assert expected[attrs["motion"]], f"{clip_id}: object path does not match {attrs['motion']}"


def test_shape_masks_differ():
    masks = {s: synth.shape_mask(s, 64, 48) for s in synth.SHAPES}
    for a in synth.SHAPES:
        for b in synth.SHAPES:
            if a < b:  # any two shapes differ in at least a fifth of their pixels
                assert (masks[a] ^ masks[b]).sum() > 0.2 * masks[a].sum(), (a, b)
    with pytest.raises(ValueError):
        synth.shape_mask("hexagon", 64, 48)


def test_sound_matches_attributes(dataset):
    attributes = json.loads((dataset / "attributes.json").read_text())
    for clip_id, attrs in attributes.items():
        wave, rate = decode_audio(dataset / "audio_mp3" / attrs["split"] / f"{clip_id}.mp3")
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()]
        assert abs(peak - synth.PITCHES[attrs["pitch"]]) < 10, f"{clip_id}: peak {peak} Hz"
        # loudness over 10 ms windows: steady for a continuous tone, gated for beeps
        windows = wave[: len(wave) // 320 * 320].reshape(-1, 320)
        rms = np.sqrt((windows**2).mean(1))[2:-2]
        quiet_fraction = float((rms < 0.3 * rms.max()).mean())
        duty = synth.RHYTHMS[attrs["rhythm"]][1]
        assert abs(quiet_fraction - (1 - duty)) < 0.1, (clip_id, attrs["rhythm"], quiet_fraction)


def test_beep_rate_distinguishes_slow_and_fast():
    t = np.arange(32000 * 4) / 32000
    (slow_period, slow_duty, _), (fast_period, fast_duty, _) = synth.RHYTHMS["slow"], synth.RHYTHMS["fast"]
    slow, fast = synth.beep_envelope(t, slow_period, slow_duty), synth.beep_envelope(t, fast_period, fast_duty)
    # the 10 ms ramps take 10 ms off every beep
    assert abs(float(slow.mean()) - (slow_duty - 0.01 / slow_period)) < 0.01
    assert abs(float(fast.mean()) - (fast_duty - 0.01 / fast_period)) < 0.01
    onsets = lambda env: int(((env[1:] > 0.5) & (env[:-1] <= 0.5)).sum())  # noqa: E731
    assert onsets(slow) == round(4 / slow_period)  # one beep per period, the first rising from t = 0
    assert onsets(fast) == round(4 / fast_period)


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
    parsed = synth.parse_attributes("A Blue cross moves  up and down. a low pitched tone beeps slowly.")
    assert parsed == {"shape": "cross", "colour": "blue", "motion": "up_and_down", "pitch": "low",
                      "rhythm": "slow"}
    partial = synth.parse_attributes("a green thing moves in a circle. a tone plays continuously.")
    assert partial == {"shape": None, "colour": "green", "motion": "circling", "pitch": None, "rhythm": "continuous"}
    # the first mention wins
    assert synth.parse_attributes("a red bar. the bar is blue.")["colour"] == "red"


def test_bad_counts_rejected(tmp_path):
    with pytest.raises(ValueError, match="num-test"):
        synth.synthesize(tmp_path, {"train": 1, "test": -1}, progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        synth.synthesize(tmp_path, {"dev": 1}, progress=False)


ONE_CLIP = ("--num-train", "1", "--num-val", "0", "--num-test", "0", "--workers", "1")


def test_a_folder_holding_a_users_data_is_refused_unless_overwrite(tmp_path, capsys):
    mine = tmp_path / "captions.json"
    mine.write_text('{"my_clip": "a week of careful captions."}')
    assert cli_main(["synth", "--out", str(tmp_path), *ONE_CLIP]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "captions.json" in err and "--overwrite" in err
    assert mine.read_text() == '{"my_clip": "a week of careful captions."}' and not (tmp_path / "videos").exists()
    assert cli_main(["synth", "--out", str(tmp_path), *ONE_CLIP, "--overwrite"]) == 0
    assert list(json.loads(mine.read_text())) == ["synth_train_00000"]


def test_a_rerun_into_its_own_folder_works_but_a_file_changed_since_is_kept(tmp_path, capsys):
    out = tmp_path / "new"
    assert cli_main(["synth", "--out", str(out), *ONE_CLIP]) == 0
    (out / "notes.txt").write_text("prepare outputs and other files beside synth's do not matter")
    assert cli_main(["synth", "--out", str(out), *ONE_CLIP]) == 0
    captions = out / "captions.json"
    captions.write_text('{"synth_train_00000": "my own caption."}')
    capsys.readouterr()
    assert cli_main(["synth", "--out", str(out), *ONE_CLIP]) == 2
    assert "captions.json: changed since synth wrote it" in capsys.readouterr().err
    assert captions.read_text() == '{"synth_train_00000": "my own caption."}'


def test_a_negative_count_is_one_line_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["synth", "--out", str(out), "--num-train", "-5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-train must be >= 0, got -5" in err
    assert not out.exists()
