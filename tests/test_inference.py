"""`avlformer infer`, `avlformer caption`, inference.sh and the shared captioning pipeline (tiny random model)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data import synth
from avlformer.data.recipe import PreprocessRecipe
from avlformer.inference import pipeline
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAX_GEN = 6
# Small stored frames keep decoding cheap; the checkpoint's recipe is what inference must follow.
RECIPE = PreprocessRecipe(stored_frames=8, short_side=64)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    config.max_gen_length = MAX_GEN
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint-1-1", AVLFormer(config), config, RECIPE)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """A folder with two synth clips (mp3s beside them), a video without audio, a corrupt one and a non-video."""
    root = tmp_path_factory.mktemp("videos")
    synth.synthesize(root / "raw", {"test": 2}, seed=3, workers=1, progress=False)
    folder = root / "raw" / "videos" / "test"
    media_fixtures.write_no_audio(folder / "silent.mkv")
    media_fixtures.write_not_a_video(folder / "broken.mp4")
    (folder / "notes.txt").write_text("not listed")
    return {"videos": folder, "audio": root / "raw" / "audio_mp3" / "test", "root": root}


def run_infer(checkpoint, videos, tmp_path, *extra) -> tuple[int, list, dict]:
    output = tmp_path / "pred.json"
    code = cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(videos["videos"]),
                     "--output", str(output), "--device", "cpu", *extra])
    predictions = json.loads(output.read_text())
    sidecar = json.loads((tmp_path / "pred.confidence.json").read_text())
    return code, predictions, sidecar


def test_infer_writes_coco_predictions_and_reports_failures(checkpoint, videos, tmp_path):
    code, predictions, sidecar = run_infer(checkpoint, videos, tmp_path, "--test_audio_fname", str(videos["audio"]),
                                           "--do_lower_case", "--do_test")
    assert code == 1  # one video failed, the rest were still captioned
    ids = [p["image_id"] for p in predictions]
    assert ids == ["silent", "synth_test_00000", "synth_test_00001"]  # file stems, sorted; notes.txt ignored
    assert all(isinstance(p["caption"], str) and p["caption"] for p in predictions)
    assert [f["image_id"] for f in sidecar["failed"]] == ["broken"]
    assert "broken.mp4" in sidecar["failed"][0]["error"]
    sources = {p["image_id"]: p["audio_source"] for p in sidecar["predictions"]}
    assert sources == {"silent": "silence", "synth_test_00000": "mp3", "synth_test_00001": "mp3"}
    assert any("silent" in w and "silence" in w for w in sidecar["warnings"])
    assert all(0.0 <= p["confidence"] <= 1.0 for p in sidecar["predictions"])
    assert sidecar["decoding"] == {"num_beams": 1, "max_gen_length": MAX_GEN, "length_penalty": 1.0}


def test_audio_falls_back_to_video_stream(checkpoint, videos, tmp_path):
    _, _, without = run_infer(checkpoint, videos, tmp_path)
    assert {p["image_id"]: p["audio_source"] for p in without["predictions"]}["synth_test_00000"] == "video"
    partial = tmp_path / "partial_mp3"
    partial.mkdir()
    shutil.copy(videos["audio"] / "synth_test_00001.mp3", partial)
    _, _, mixed = run_infer(checkpoint, videos, tmp_path, "--test-audio-fname", str(partial))
    sources = {p["image_id"]: p["audio_source"] for p in mixed["predictions"]}
    assert sources["synth_test_00000"] == "video" and sources["synth_test_00001"] == "mp3"
    assert any("synth_test_00000.mp3: not found" in w for w in mixed["warnings"])


def test_decoding_flags_override_checkpoint(checkpoint, videos, tmp_path):
    _, predictions, sidecar = run_infer(checkpoint, videos, tmp_path, "--max_gen_length", "2", "--num-beams", "2",
                                        "--length-penalty", "0.5")
    assert sidecar["decoding"] == {"num_beams": 2, "max_gen_length": 2, "length_penalty": 0.5}
    from avlformer.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer()
    assert all(len(tokenizer.tokenize(p["caption"])) <= 2 for p in predictions)


def test_same_input_same_caption_and_batching_does_not_matter(checkpoint, videos):
    loaded = pipeline.load_for_inference(checkpoint, "cpu")
    clips = pipeline.list_videos(videos["videos"]).videos
    decoding = pipeline.checkpoint_decoding(loaded.config)
    one = pipeline.caption_videos(loaded, clips, decoding, audio_dir=videos["audio"], batch_size=1, progress=False)
    many = pipeline.caption_videos(loaded, clips, decoding, audio_dir=videos["audio"], batch_size=3, num_workers=1,
                                   progress=False)
    assert [(p.video_id, p.caption) for p in one.predictions] == [(p.video_id, p.caption) for p in many.predictions]
    assert [p.confidence for p in one.predictions] == pytest.approx([p.confidence for p in many.predictions],
                                                                    rel=1e-4)
    assert len(one.failures) == len(many.failures) == 1


def test_silenced_audio_option(checkpoint, videos):
    loaded = pipeline.load_for_inference(checkpoint, "cpu")
    dataset = pipeline.VideoFolderDataset([videos["videos"] / "synth_test_00000.mp4"], videos["audio"],
                                          loaded.spec, silence_audio=True)
    item = dataset[0]
    assert item.audio_source == "silence" and not item.audio.abs().any()


def test_inputs_match_the_training_loader(tmp_path):
    """A video captioned directly must give the model exactly the tensors the eval loader gives after prepare."""
    from avlformer.data.dataset import CaptionDataset, DataConfig

    data = tmp_path / "data"
    video = media_fixtures.write_normal(data / "videos" / "test" / "clip.mp4", seconds=1.5)
    (data / "captions.json").write_text(json.dumps({"clip": "a clip."}))
    assert cli_main(["prepare", "--data-dir", str(data), "--workers", "1", "--splits", "test"]) == 0
    loader_config = DataConfig(num_frames=8, image_size=64)
    item = CaptionDataset(data / "metadata" / "test_32frames.yaml", loader_config, is_train=False)[0]
    spec = pipeline.InputSpec(num_frames=8, image_size=64, clip_samples=loader_config.clip_samples, sample_rate=32000,
                              recipe=PreprocessRecipe.paper())
    direct = pipeline.load_clip_input(video, None, spec)
    assert direct.audio_source == "video"
    assert torch.equal(direct.frames, item["frames"])
    assert torch.equal(direct.audio, item["audio"])


def test_caption_command_prints_one_line_per_video(checkpoint, videos, capsys):
    clips = [videos["videos"] / "synth_test_00001.mp4", videos["videos"] / "silent.mkv"]
    assert cli_main(["caption", "--model", str(checkpoint), *map(str, clips), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(c) for c in clips]
    assert all(line.split("\t")[1] for line in lines)


def test_list_videos_filters_by_extension(tmp_path):
    for name in ("b.MOV", "a.mp4", "c.webm", "d.avi", "e.mkv", "f.txt", "g.mp3", "h.m4v"):
        (tmp_path / name).write_bytes(b"x")
    listing = pipeline.list_videos(tmp_path)
    assert [p.name for p in listing.videos] == ["a.mp4", "b.MOV", "c.webm", "d.avi", "e.mkv", "h.m4v"]
    assert listing.problems == []
    with pytest.raises(FileNotFoundError, match="no video files"):
        pipeline.list_videos(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found"):
        pipeline.list_videos(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_duplicate_stems_rejected(tmp_path):
    with pytest.raises(ValueError, match="same id"):
        pipeline.check_unique_ids([tmp_path / "a.mp4", tmp_path / "a.mkv"])


def test_bad_arguments_exit_with_a_message(checkpoint, videos, tmp_path, capsys):
    assert cli_main(["infer", "--eval_model_dir", str(tmp_path / "nope"), "--test_video_fname",
                     str(videos["videos"]), "--output", str(tmp_path / "p.json")]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(videos["videos"]),
                     "--test_audio_fname", str(tmp_path / "no_audio_dir"), "--output", str(tmp_path / "p.json")]) == 2
    assert "no_audio_dir" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(videos["videos"]),
                         "--device", "cuda", "--output", str(tmp_path / "p.json")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_beams"):
        pipeline.DecodingOptions(num_beams=0)


def test_inference_sh_wraps_infer(checkpoint, videos, tmp_path):
    avlformer = Path(sys.executable).parent / "avlformer"
    if not avlformer.exists():
        pytest.skip("the avlformer console script is not installed in this environment")
    env = {**os.environ, "AVLFORMER": str(avlformer), "EVAL_MODEL_DIR": str(checkpoint),
           "TEST_VIDEO_FNAME": str(videos["videos"]), "TEST_AUDIO_FNAME": str(videos["audio"])}
    output = tmp_path / "sh_pred.json"
    done = subprocess.run(["bash", str(REPO / "inference.sh"), "--output", str(output), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # the broken video
    assert output.is_file(), done.stderr
    assert [p["image_id"] for p in json.loads(output.read_text())] == ["silent", "synth_test_00000",
                                                                       "synth_test_00001"]


def test_a_bad_sample_rate_fails_only_the_items_that_use_it(checkpoint, videos):
    import numpy as np

    from avlformer.inference.captioner import Captioner

    captioner = Captioner(checkpoint, device="cpu")
    frames = np.full((4, 32, 32, 3), 90, np.uint8)
    video = str(videos["videos"] / "synth_test_00000.mp4")
    wave = np.zeros(8000, np.float32)
    results = captioner([frames, video], audio=[wave, None], sample_rate=-1)   # aborted the whole call once
    assert not results[0].ok and results[0].error.startswith("audio of <frames 0>: sample_rate must be")
    assert results[1].ok and results[1].caption                  # the item that does not use the rate is captioned
    for bad, reason in ((0, "1000 to 768000 Hz, got 0"), ("abc", "whole number of Hz, got 'abc'"), (1, "got 1"),
                        (True, "whole number"), (2.5, "whole number")):
        with pytest.raises(ValueError, match=reason):
            captioner.prepare(frames, audio=wave, sample_rate=bad)
    long_wave = np.zeros(1000 * 601, np.float32)                # 601 s at the lowest rate: never resampled
    with pytest.raises(ValueError, match="601 s of sound, more than 600 s"):
        captioner.prepare(frames, audio=long_wave, sample_rate=1000)
    assert captioner.prepare(frames, audio=wave, sample_rate=np.int64(16000)).audio_source == "array"


def test_a_symbolic_link_loop_is_not_called_a_broken_link(tmp_path):
    loop = tmp_path / "loop.mp4"
    loop.symlink_to("loop.mp4")
    assert "symbolic link loop" in pipeline.not_a_video_file(loop)
    (tmp_path / "folder.mp4").mkdir()
    assert pipeline.not_a_video_file(tmp_path / "folder.mp4") == "is a folder, not a video file"
