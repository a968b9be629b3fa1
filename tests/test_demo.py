"""`avlformer demo`: a reduced run (few clips, few steps) produces every artefact, well formed, and the report
renders in a real headless browser (Chromium) without errors, showing every clip."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data import synth
from avlformer.demo import report

PROOF_KEYS = ("visual_accuracy", "sound_accuracy", "silenced_visual_accuracy", "silenced_sound_accuracy",
              "sound_chance", "cider", "bleu4", "wall_seconds")
NUM_TEST = 3
# 16 clips in one batch: one optimizer step per epoch. Enough steps for the loss to fall far below where it
# started and for greedy captions to use only the demo's words; far too few to learn the attributes.
NUM_TRAIN, EPOCHS = 16, 30


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def render_in_browser(page: Path, profile: Path) -> tuple[str, str]:
    """(DOM after load, browser log). A fresh profile, no network features, software rendering."""
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("demo")
    code = cli_main(["demo", "--workdir", str(work), "--num-train", str(NUM_TRAIN), "--num-val", "1", "--num-test",
                     str(NUM_TEST), "--epochs", str(EPOCHS), "--batch-size", "2"])
    assert code == 0
    return work


def live_children() -> list[str]:
    """This process's children that are still running (zombies excluded), as "pid name cmdline"."""
    me, found = str(os.getpid()), []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if fields.get("PPid", "").strip() == me and not fields.get("State", "").strip().startswith("Z"):
            found.append(f"{status.parent.name} {fields['Name'].strip()} {cmdline}")
    # multiprocessing's resource tracker lives exactly as long as its parent (it exits when the parent's pipe
    # closes), so it is no leak; pool and loader workers are.
    return [child for child in found if "resource_tracker" not in child]


def test_reduced_demo_leaves_no_process_behind(demo_run):
    assert live_children() == []


def test_reduced_demo_writes_metrics(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    for key in PROOF_KEYS:
        assert isinstance(metrics[key], float), key
    for key in PROOF_KEYS[:5]:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["sound_chance"] == pytest.approx(1 / 3)
    assert metrics["cider"] >= 0 and 0 <= metrics["bleu4"] <= 1
    assert set(metrics["stage_seconds"]) == {"synth", "prepare", "train", "caption", "evaluate", "report"}
    assert metrics["num_captioned"] == NUM_TEST and metrics["failed"] == []
    assert metrics["train_steps"] == EPOCHS


def test_reduced_demo_learns(demo_run):
    """A model that does not learn (no update applied, wrong weights saved or loaded, wrong vocabulary) fails."""
    from avlformer.data.tokenizer import load_tokenizer
    from avlformer.demo.cli import read_loss_curve

    curve = read_loss_curve(demo_run / "train" / "log")
    assert [step for step, _ in curve] == list(range(1, EPOCHS + 1))
    first, last = curve[0][1], curve[-1][1]
    assert last < 0.6 * first, curve
    tokenizer = load_tokenizer()
    captions = json.loads((demo_run / "raw" / "captions.json").read_text())
    demo_tokens = {token for text in captions.values() for token in tokenizer.tokenize(text)}
    for name in ("test.json", "test_silenced.json"):
        for prediction in json.loads((demo_run / "predictions" / name).read_text()):
            tokens = tokenizer.tokenize(prediction["caption"])
            assert tokens and set(tokens) <= demo_tokens, (prediction, set(tokens) - demo_tokens)


def test_infer_on_the_raw_test_videos_writes_the_demos_captions(demo_run, tmp_path):
    """`avlformer infer` with the demo's checkpoint, its raw test videos and their mp3s: the very same file."""
    raw = demo_run / "raw"
    checkpoint = json.loads((demo_run / "metrics.json").read_text())["checkpoint"]
    output = tmp_path / "infer.json"
    assert cli_main(["infer", "--eval_model_dir", checkpoint, "--test_video_fname", str(raw / "videos" / "test"),
                     "--test_audio_fname", str(raw / "audio_mp3" / "test"), "--output", str(output),
                     "--device", "cpu"]) == 0
    assert json.loads(output.read_text()) == json.loads((demo_run / "predictions" / "test.json").read_text())


def test_captions_from_the_prepared_shards_are_the_demos(demo_run):
    """The eval loader's tensors from the prepared test split give the captions the demo wrote from raw clips."""
    from avlformer.data.clip_ids import clip_id_from_key
    from avlformer.data.dataset import CaptionDataset, DataConfig
    from avlformer.inference import pipeline

    loaded = pipeline.load_for_inference(json.loads((demo_run / "metrics.json").read_text())["checkpoint"], "cpu")
    config = loaded.config
    data_config = DataConfig(num_frames=config.num_frames, image_size=config.image_size,
                             sample_rate=config.audio.sample_rate, clip_seconds=config.audio.clip_seconds)
    yaml_path = demo_run / "raw" / "metadata" / f"test_{loaded.recipe.stored_frames}frames.yaml"
    dataset = CaptionDataset(yaml_path, data_config, is_train=False)
    items = [dataset[i] for i in range(len(dataset))]
    clips = [pipeline.ClipInput(index=i, video_id=clip_id_from_key(item["video_key"]), path=item["video_key"],
                                frames=item["frames"], audio=item["audio"], audio_source="mp3")
             for i, item in enumerate(items)]
    predictions = pipeline.caption_batch(loaded.model, clips, pipeline.checkpoint_decoding(config), loaded.device,
                                         loaded.tokenizer)
    demo = {p["image_id"]: p["caption"]
            for p in json.loads((demo_run / "predictions" / "test.json").read_text())}
    assert {p.video_id: p.caption for p in predictions} == demo


def test_reduced_demo_predictions_and_checkpoint(demo_run):
    attributes = json.loads((demo_run / "raw" / "attributes.json").read_text())
    test_ids = sorted(cid for cid, a in attributes.items() if a["split"] == "test")
    for name in ("test.json", "test_silenced.json"):
        predictions = json.loads((demo_run / "predictions" / name).read_text())
        assert [p["image_id"] for p in predictions] == test_ids
        sidecar = json.loads((demo_run / "predictions" / name.replace(".json", ".confidence.json")).read_text())
        assert len(sidecar["predictions"]) == NUM_TEST
    silenced = json.loads((demo_run / "predictions" / "test_silenced.confidence.json").read_text())
    assert {p["audio_source"] for p in silenced["predictions"]} == {"silence"}
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert (Path(metrics["checkpoint"]) / "model.safetensors").is_file()


def test_reduced_demo_report_renders_in_chromium(demo_run, tmp_path):
    page = demo_run / "report.html"
    text = page.read_text()
    assert "src='http" not in text and 'src="http' not in text  # self-contained
    dom, log = render_in_browser(page, tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body))
    assert attrs["clips"] == str(NUM_TEST)
    # per clip a frame strip and a spectrogram, plus the attention-mask heatmap
    assert attrs["images-total"] == str(2 * NUM_TEST + 1)
    assert attrs["images-ok"] == attrs["images-total"]
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert not console, console
    assert "<polyline" in dom  # the loss curve


def test_rerun_reuses_the_dataset(demo_run, capsys):
    from avlformer.demo.cli import stage_synth

    data = stage_synth(demo_run / "raw", {"train": NUM_TRAIN, "val": 1, "test": NUM_TEST}, 0)
    assert "reusing" in capsys.readouterr().out
    assert len(data["captions"]) == NUM_TRAIN + 1 + NUM_TEST


def test_browser_check_can_fail(tmp_path):
    """The console check above does see page errors."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, log = render_in_browser(page, tmp_path / "profile")
    assert any("CONSOLE" in line and "undefinedFunction" in line for line in log.splitlines())


def test_highlight_marks_wrong_and_missing_attributes():
    truth = {"shape": "circle", "colour": "red", "motion": "side_to_side", "pitch": "high", "rhythm": "fast"}
    html_text = report.highlight_caption("a blue circle moves from side to side. a high pitched tone.", truth)
    assert "<mark class='wrong'" in html_text and ">blue</mark>" in html_text
    assert html_text.count("<mark class='ok'") == 3  # circle, moves from side to side, high pitched
    assert "missing: rhythm" in html_text
    assert "&lt;b&gt;" in report.highlight_caption("<b>", truth)  # escaped


def test_images_and_chart():
    frames = np.zeros((8, 24, 32, 3), np.uint8)
    strip = report.frame_strip(frames, count=4, height=24)
    assert strip.size == (4 * 32 + 3 * 2, 24)
    # the spectrogram's brightest row: low frequencies at the bottom, so a higher tone peaks higher up
    peaks = []
    for hz in (300, 3000):
        tone = np.sin(2 * np.pi * hz * np.arange(32000) / 32000).astype(np.float32)
        spec = report.spectrogram(torch.from_numpy(tone), 32000)
        assert spec.dtype == np.uint8 and spec.shape[2] == 3
        peaks.append(spec.astype(float).sum(axis=(1, 2)).argmax())
    assert peaks[1] < peaks[0]
    heat = report.attention_mask(torch.eye(4), num_video_tokens=2)
    assert heat.shape[0] == heat.shape[1] >= 320 and (heat[heat.shape[0] // 2] == 255).all()  # the boundary line
    assert "<polyline" in report.loss_curve_svg([(1, 3.0), (2, 2.0), (3, 1.0)])
    assert "<polyline" not in report.loss_curve_svg([(1, 3.0)])
    assert report.image_uri(heat).startswith("data:image/png;base64,")


def test_attribute_accuracy_counts_missing_predictions_wrong():
    from avlformer.demo.cli import attribute_accuracy

    truth = {"a": {"shape": "circle", "colour": "red", "motion": "side_to_side", "pitch": "low", "rhythm": "slow"},
             "b": {"shape": "bar", "colour": "blue", "motion": "circling", "pitch": "high", "rhythm": "fast"}}
    predictions = {"a": synth.make_caption(truth["a"])}
    scores = attribute_accuracy(predictions, truth)
    assert scores == {k: 0.5 for k in (*synth.VISUAL_ATTRIBUTES, *synth.SOUND_ATTRIBUTES)}


def test_demo_refuses_a_workdir_inside_a_checkpoint_or_over_its_config(tmp_path, capsys):
    import argparse

    from avlformer.demo import cli as demo_cli

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    assert demo_cli.main(parser.parse_args(["--workdir", str(checkpoint / "demo")])) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"avlformer demo: --workdir {checkpoint / 'demo'}: lies inside the checkpoint folder {checkpoint}; give a "
        "folder outside it"]
    assert not (checkpoint / "demo").exists()

    work = tmp_path / "work"
    work.mkdir()
    config = work / "metrics.json"
    config.write_text(demo_cli.default_config_path().read_text())
    assert demo_cli.main(parser.parse_args(["--workdir", str(work), "--config", str(config)])) == 1
    assert "is one of the input files" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == ["metrics.json"]
