"""The scenes preset end to end: synth -> prepare -> the training dataset and `avlformer evaluate` see all five
references of every clip, the structured score reads every reference back, and the data is a pure function of
the seed whatever the worker count."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from avlformer.cli import main as cli_main
from avlformer.data import synth, synth_scenes
from avlformer.data.scene_captions import MAX_WORDS, REFERENCES_PER_CLIP

COUNTS = {"train": 3, "val": 0, "test": 2}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    assert cli_main(["synth", "--preset", "scenes", "--out", str(out), "--num-train", "3", "--num-val", "0",
                     "--num-test", "2", "--seed", "5", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(raw) -> Path:
    from avlformer.data.prepare import prepare_dataset

    result = prepare_dataset(raw, num_frames=4, short_side=32, workers=1, progress=False)
    assert not result.errors, result.errors
    assert result.prepared == {"train": 3, "test": 2}
    return raw


def test_every_clip_has_five_different_references_of_plausible_length(raw):
    captions = json.loads((raw / "captions.json").read_text())
    scenes = json.loads((raw / "attributes.json").read_text())
    assert set(captions) == set(scenes) and len(captions) == 5
    for clip_id, references in captions.items():
        assert len(references) == REFERENCES_PER_CLIP == len(set(references))
        assert all(20 <= len(r.split()) <= MAX_WORDS for r in references)
        assert (raw / "videos" / scenes[clip_id]["split"] / f"{clip_id}.mp4").is_file()
        assert (raw / "audio_mp3" / scenes[clip_id]["split"] / f"{clip_id}.mp3").is_file()


def test_same_seed_same_bytes_at_any_worker_count(raw, tmp_path):
    synth.synthesize(tmp_path, COUNTS, seed=5, workers=2, progress=False, preset=synth_scenes.SCENES)
    files = sorted(p.relative_to(raw) for p in raw.rglob("*")
                   if p.is_file() and p.suffix in (".mp4", ".mp3", ".json") and p.name != "synth_outputs.json")
    assert len(files) == 12  # 5 mp4 + 5 mp3 + captions.json + attributes.json
    for name in files:
        assert (tmp_path / name).read_bytes() == (raw / name).read_bytes(), name
    other = synth.synthesize(tmp_path / "other", {"test": 1}, seed=6, workers=1, progress=False,
                             preset=synth_scenes.SCENES)
    assert other["attributes"] != {k: v for k, v in json.loads((raw / "attributes.json").read_text()).items()
                                   if k in other["attributes"]}


def test_the_picture_shows_the_scene(raw):
    """A still, unchanging object's colour is on screen at its slot; a clip's audio is not silent."""
    scenes = json.loads((raw / "attributes.json").read_text())
    clip_id, scene = sorted(scenes.items())[0]
    with av.open(str(raw / "videos" / scene["split"] / f"{clip_id}.mp4")) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(raw / "audio_mp3" / scene["split"] / f"{clip_id}.mp3")) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert np.abs(audio).max() > 0.05
    times = np.arange(len(frames)) / synth.FPS
    for obj in scene["objects"]:
        xs, ys = synth_scenes.positions(obj, times, scene["duration"])
        shown = synth_scenes.visible(obj, times, scene["duration"])
        i = int(np.nonzero(shown)[0][0])
        pixel = frames[i, int(round(ys[i])), int(round(xs[i]))].astype(int)
        colours = [np.array(synth_scenes.COLOURS[c]) for c in (obj["colour"], obj["new_colour"]) if c]
        # the centre pixel is the object's colour or its texture's darker shade (h264 blurs a little)
        assert min(min(np.abs(pixel - c).max(), np.abs(pixel - 0.45 * c).max()) for c in colours) < 60, obj


def test_bounce_times_are_where_the_path_turns():
    obj = {"shape": "circle", "colour": "red", "size": "small", "texture": "solid", "motion": "bouncing",
           "event": "none", "event_time": None, "new_colour": None, "slot": [64.0, 48.0], "phase": 0.0,
           "heading": 0.5}
    times = synth_scenes.bounce_times(obj, 4.0)
    assert times, "a bouncing object crosses the square more than once per clip"
    for t in times:
        xs, ys = synth_scenes.positions(obj, np.array([t - 0.02, t, t + 0.02]), 4.0)
        assert np.sign(xs[1] - xs[0]) != np.sign(xs[2] - xs[1]) or np.sign(ys[1] - ys[0]) != np.sign(ys[2] - ys[1])


def test_prepare_keeps_all_references_and_evaluate_reads_them(prepared, tmp_path):
    from avlformer.data.dataset import CaptionDataset
    from avlformer.evaluation.references import load_references

    captions = json.loads((prepared / "captions.json").read_text())
    references = load_references(prepared / "metadata" / "test.caption_coco_format.json")
    assert {key.split("/")[-1][:-4]: refs for key, refs in references.items()} == \
        {cid: refs for cid, refs in captions.items() if cid.startswith("scene_test")}
    assert load_references(prepared / "metadata" / "test.caption.tsv") == references
    train = CaptionDataset(prepared / "metadata" / "train_4frames.yaml", is_train=False)
    assert sorted(len(refs) for refs in train.captions) == [5, 5, 5]
    linelist = (prepared / "metadata" / "train.caption.linelist.tsv").read_text().split("\n")
    assert len([row for row in linelist if row]) == 15

    # every reference, given as the prediction, scores 100 on every structured key through `avlformer evaluate`
    for k in (0, REFERENCES_PER_CLIP - 1):
        pred = tmp_path / f"pred{k}.json"
        pred.write_text(json.dumps({key: refs[k] for key, refs in references.items()}))
        out = tmp_path / f"m{k}.json"
        assert cli_main(["evaluate", "--pred", str(pred), "--ref", str(prepared / "metadata" /
                         "test.caption_coco_format.json"), "--metrics", "scenes", "--scenes",
                         str(prepared / "attributes.json"), "--output", str(out)]) == 0
        metrics = json.loads(out.read_text())["metrics"]
        assert metrics["Scene/visual"] == metrics["Scene/sound"] == metrics["Scene/av_relation"] == 100.0
        assert all(value == 100.0 for name, value in metrics.items() if name.startswith("Scene/"))


def test_evaluate_scenes_without_ground_truth_is_skipped_and_says_why(prepared, tmp_path, capsys):
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"test/scene_test_00000.mp4": "a red circle"}))
    code = cli_main(["evaluate", "--pred", str(pred), "--ref", str(prepared / "metadata" /
                     "test.caption_coco_format.json"), "--metrics", "scenes"])
    assert code == 3 and "--scenes" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": 1}))
    code = cli_main(["evaluate", "--pred", str(pred), "--ref", str(prepared / "metadata" /
                     "test.caption_coco_format.json"), "--metrics", "scenes", "--scenes", str(bad)])
    assert code == 2 and "bad.json" in capsys.readouterr().err


def test_the_vocab_synth_writes_trains_a_small_decoder_end_to_end(prepared, tmp_path, capsys):
    """synth's vocab/vocab.txt -> train --tokenizer-name with a decoder of that many rows -> the checkpoint keeps
    that vocabulary -> infer writes captions of its words; a decoder too small for it is refused in one line."""
    from training_fakes import deterministic_tiny_config

    from avlformer.data.tokenizer import load_tokenizer

    vocab_dir = prepared / "vocab"
    small, full = load_tokenizer(str(vocab_dir)), load_tokenizer()
    assert 104 < len(small) < 400
    captions = json.loads((prepared / "captions.json").read_text())
    scenes = json.loads((prepared / "attributes.json").read_text())
    for clip_id, references in captions.items():
        for text in references:
            same = small.convert_ids_to_tokens(small(text)["input_ids"]) == \
                full.convert_ids_to_tokens(full(text)["input_ids"])
            # the training references use only the vocabulary's pieces; other splits may meet [UNK]
            assert same or scenes[clip_id]["split"] != "train"

    config = deterministic_tiny_config(num_frames=4, image_size=32)
    config.text.vocab_size = len(small)
    model_config = tmp_path / "model.json"
    config.save(model_config)
    flags = ["train", "--data-dir", str(prepared), "--train-yaml", "metadata/train_4frames.yaml", "--model-config",
             str(model_config), "--tokenizer-name", str(vocab_dir), "--per-gpu-train-batch-size", "5",
             "--num-train-epochs", "1", "--num-workers", "0", "--save-steps", "0", "--device", "cpu"]
    assert cli_main([*flags, "--output-dir", str(tmp_path / "run")]) == 0
    checkpoint = next((tmp_path / "run").glob("checkpoint-*"))
    assert (checkpoint / "vocab.txt").read_bytes() == (vocab_dir / "vocab.txt").read_bytes()
    output = tmp_path / "pred.json"
    assert cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname",
                     str(prepared / "videos" / "test"), "--output", str(output), "--device", "cpu"]) == 0
    predictions = json.loads(output.read_text())
    assert len(predictions) == 2
    for prediction in predictions:  # an untrained model may also pick the vocabulary's [unusedN] rows
        words = re.sub(r"\[unused\d+\]", "", prediction["caption"])
        assert words.strip() and "[UNK]" not in small.tokenize(words), prediction

    config.text.vocab_size = len(small) - 1
    config.save(model_config)
    capsys.readouterr()
    assert cli_main([*flags, "--output-dir", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocab" in err[0] and f"{len(small)} tokens" in err[0], err
