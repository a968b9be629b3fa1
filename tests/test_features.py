"""Cached encoder features: training from them is end-to-end training with frozen encoders in eval mode (same loss,
same gradients, same weights after a few steps), extraction resumes and refuses to mix encoders, `train
--features` refuses flags it could not honour, and its checkpoints caption raw videos."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data.features import FeatureFile, FeatureSpec, feature_path, from_storage, to_storage
from avlformer.modeling.avlformer import AVLFormer
from avlformer.modeling.checkpoint import load_model, save_checkpoint
from avlformer.data.recipe import PreprocessRecipe
from avlformer.training.args import ArgumentError, parse_train_args
from avlformer.training.features import collate_features, encoder_spec, freeze_encoders

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402
from test_data_loader import write_tiny_dataset  # noqa: E402
from training_fakes import FakeCaptionDataset, deterministic_tiny_config  # noqa: E402

from avlformer.data.dataset import CaptionDataset, collate  # noqa: E402
from avlformer.modeling.avlformer import AVLFormerConfig  # noqa: E402


def trainable_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_loss_and_gradients_from_features_equal_end_to_end_with_frozen_eval_encoders():
    # The full tiny preset: patchout, SpecAugment, mel jitter, drop path and text dropout are all on, so the test
    # fails if the cached path skipped a projection or the encoders ran in training mode.
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    config.max_seq_length = 24
    model = AVLFormer(config)
    freeze_encoders(model)
    data = FakeCaptionDataset(config, size=2)
    batch = collate([data[0], data[1]])

    torch.manual_seed(7)
    end_to_end = model(batch)
    end_to_end["loss"].backward()
    reference = trainable_grads(model)
    model.zero_grad(set_to_none=True)

    with torch.no_grad():
        video, audio = model.encoder_outputs(batch["frames"], batch["audio"])
    cached = {k: v for k, v in batch.items() if k not in ("frames", "audio")}
    cached.update(video_features=to_storage(video, "fp32"), audio_features=to_storage(audio, "fp32"))
    cached = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in cached.items()}
    torch.manual_seed(7)
    from_features = model(cached)
    from_features["loss"].backward()
    grads = trainable_grads(model)

    assert {"fc.weight", "passt.linear.weight", "learn_vid_att.weight"} <= set(grads)
    assert not any(name.startswith(("swin.", "passt.net.")) for name in grads)
    assert set(grads) == set(reference)
    torch.testing.assert_close(from_features["loss"], end_to_end["loss"], rtol=1e-6, atol=1e-6)
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_and_fp16_storage_round_trip():
    values = torch.tensor([[1.0, -2.5, 3.140625]])
    assert torch.equal(from_storage(to_storage(values, "bf16"), "bf16"), values.to(torch.bfloat16).float())
    assert torch.equal(from_storage(to_storage(values, "fp16"), "fp16"), values.half().float())


def test_spec_mismatch_names_the_problem():
    spec = FeatureSpec("a" * 64, 16, 128, 19, 32)
    assert "17 video tokens" in FeatureSpec("a" * 64, 17, 128, 19, 32).problem_with(spec)
    assert "audio width" in FeatureSpec("a" * 64, 16, 128, 19, 64).problem_with(spec)
    assert "other encoder weights" in FeatureSpec("b" * 64, 16, 128, 19, 32).problem_with(spec)
    assert FeatureSpec("a" * 64, 16, 128, 19, 32, "bf16").problem_with(spec) is None


# ------------------------------------------------------------------------------------------------ end to end

RECIPE = PreprocessRecipe(stored_frames=8, short_side=64)


def feature_workspace(root: Path) -> dict:
    """A prepared tiny dataset with its recipe, a model config, and two checkpoints with different encoders."""
    data = root / "datasets"
    yaml_path = write_tiny_dataset(data)
    RECIPE.save(yaml_path.with_name(yaml_path.stem + ".preprocessor_config.json"))
    config = deterministic_tiny_config()
    model_config = root / "model.json"
    config.save(model_config)
    torch.manual_seed(3)
    checkpoint = save_checkpoint(root / "encoders", AVLFormer(config), config, RECIPE)
    torch.manual_seed(4)
    other = save_checkpoint(root / "other", AVLFormer(config), config, RECIPE)
    return {"root": root, "data": data, "yaml": yaml_path, "config": config, "model_config": model_config,
            "checkpoint": checkpoint, "other": other}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return feature_workspace(tmp_path_factory.mktemp("features"))


def extract(ws, out, *extra):
    return cli_main(["extract-features", "--data-dir", str(ws["data"]), "--model", str(ws["checkpoint"]),
                     "--out", str(out), "--precision", "fp32", "--num-workers", "0", "--batch-size", "2", *extra])


def train_flags(ws, output):
    return ["--data-dir", str(ws["data"]), "--train-yaml", "metadata/train_32frames.yaml", "--output-dir",
            str(output), "--model-config", str(ws["model_config"]), "--per-gpu-train-batch-size", "1",
            "--num-train-epochs", "2", "--learning-rate", "1e-3", "--warmup-ratio", "0", "--num-workers", "0",
            "--logging-steps", "1", "--save-steps", "0", "--device", "cpu", "--seed", "5", "--mask-prob", "0.5",
            "--max-masked-tokens", "4"]


class EvalMediaDataset(CaptionDataset):
    """Training items whose frames and audio are prepared as for inference (what the cache holds)."""

    def load_frames(self, row):
        self.is_train = False
        try:
            return super().load_frames(row)
        finally:
            self.is_train = True

    def load_audio(self, row):
        self.is_train = False
        try:
            return super().load_audio(row)
        finally:
            self.is_train = True


def last_weights(output: Path) -> dict:
    from safetensors.torch import load_file

    folders = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return load_file(folders[-1] / "model.safetensors")


def test_extract_train_from_features_equals_end_to_end_and_captions_raw_video(workspace, tmp_path, capsys):
    ws = workspace
    out = tmp_path / "features"
    assert extract(ws, out) == 0
    report = capsys.readouterr().out
    assert re.search(r"train: 3 clips \(3 computed now, 0 reused\)", report), report
    cached = FeatureFile(feature_path(out, ws["yaml"]))
    assert cached.recipe == RECIPE and len(cached) == 3
    assert not (out / ".work").exists()

    # train --features, from the command line, encoders from the same checkpoint
    assert cli_main(["train", *train_flags(ws, tmp_path / "cached"), "--features", str(out),
                     "--pretrained-checkpoint", str(ws["checkpoint"])]) == 0
    from_features = last_weights(tmp_path / "cached")

    # end to end: the same model, encoders frozen in eval mode, inputs prepared as the cache's
    from avlformer.data.tokenizer import load_tokenizer
    from avlformer.training.loop import train
    from avlformer.training.setup import build_datasets

    config = parse_train_args(train_flags(ws, tmp_path / "e2e"), model_config=ws["config"])
    raw = build_datasets(config, load_tokenizer())[0]
    model = load_model(ws["checkpoint"])[0]
    freeze_encoders(model)
    train(config, model=model, train_dataset=EvalMediaDataset(raw.paths.yaml, raw.config, True, load_tokenizer()))
    end_to_end = last_weights(tmp_path / "e2e")

    start = load_model(ws["checkpoint"])[0].state_dict()
    assert set(from_features) == set(end_to_end)
    assert not torch.equal(from_features["fc.weight"], start["fc.weight"])  # it trained
    for name in ("swin.backbone.norm.weight", "passt.net.norm.weight"):
        assert torch.equal(from_features[name], start[name])  # the encoders stayed frozen and are in the file
    for name, value in end_to_end.items():
        torch.testing.assert_close(from_features[name], value, rtol=1e-5, atol=1e-6, msg=name)

    # the feature-trained checkpoint captions a raw video like any other checkpoint
    clip = media_fixtures.write_normal(tmp_path / "clip.mp4")
    folder = sorted((tmp_path / "cached").glob("checkpoint-*"))[-1]
    capsys.readouterr()
    assert cli_main(["caption", "--model", str(folder), str(clip), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()


def test_extraction_resumes_after_a_crash_and_reuses_finished_clips(workspace, tmp_path, capsys, monkeypatch):
    ws = workspace
    out = tmp_path / "features"
    real = AVLFormer.encoder_outputs
    calls = []

    def crash_on_second_batch(self, frames, audio):
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(self, frames, audio)

    monkeypatch.setattr(AVLFormer, "encoder_outputs", crash_on_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract(ws, out)
    assert not feature_path(out, ws["yaml"]).exists()  # nothing half-written in place
    monkeypatch.setattr(AVLFormer, "encoder_outputs", real)
    capsys.readouterr()
    assert extract(ws, out) == 0
    assert "(1 computed now, 2 reused)" in capsys.readouterr().out
    assert extract(ws, out) == 0  # complete: nothing recomputed
    assert "(0 computed now, 3 reused)" in capsys.readouterr().out

    # a file from other encoders is never overwritten
    code = cli_main(["extract-features", "--data-dir", str(ws["data"]), "--model", str(ws["other"]), "--out",
                     str(out), "--precision", "fp32", "--num-workers", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "already holds features of other encoders" in err


def test_train_refuses_features_of_other_encoders_in_one_line(workspace, tmp_path, capsys):
    ws = workspace
    out = tmp_path / "features"
    assert extract(ws, out) == 0
    capsys.readouterr()
    code = cli_main(["train", *train_flags(ws, tmp_path / "run"), "--features", str(out),
                     "--pretrained-checkpoint", str(ws["other"])])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err
    assert last.startswith("avlformer train: error: ") and "do not fit the model" in last, last
    assert "other encoder weights" in last
    assert not list((tmp_path / "run").glob("checkpoint-*"))


@pytest.mark.parametrize("flags, message", [
    (["--use-checkpoint"], "video encoder does not run"),
    (["--activation-checkpointing", "audio"], "encoders do not run"),
    (["--backbone-coef-lr", "0.1"], "backbone is frozen"),
    (["--freeze-passt", "false"], "encoders are frozen"),
])
def test_train_features_refuses_flags_it_would_ignore(tmp_path, flags, message):
    with pytest.raises(ArgumentError, match=message):
        parse_train_args(["--model-preset", "tiny", "--features", str(tmp_path), *flags])
    parse_train_args(["--model-preset", "tiny", *flags])  # fine without --features


def test_config_file_values_for_end_to_end_are_accepted_with_features(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_preset": "tiny", "use_checkpoint": True, "backbone_coef_lr": 0.05}))
    config = parse_train_args(["--config", str(path), "--features", str(tmp_path)])
    assert config.data.features == str(tmp_path) and config.run.activation_checkpointing == ["video"]


class ClipsOf(torch.utils.data.Dataset):
    def __init__(self, cached):
        self.cached = cached

    def __len__(self):
        return len(self.cached)

    def __getitem__(self, row):
        return self.cached.clip(row)


def test_feature_file_reads_in_worker_processes_and_refuses_another_model_size(workspace, tmp_path):
    ws = workspace
    out = tmp_path / "features"
    assert extract(ws, out) == 0
    cached = FeatureFile(feature_path(out, ws["yaml"]))
    direct = [cached.clip(row) for row in range(len(cached))]  # opens a handle in this process first
    loader = torch.utils.data.DataLoader(ClipsOf(cached), batch_size=None, num_workers=2)
    for (video, audio), (want_video, want_audio) in zip(loader, direct, strict=True):
        assert torch.equal(video, want_video) and torch.equal(audio, want_audio)
    config = deterministic_tiny_config(num_frames=16)
    with pytest.raises(ValueError, match="video tokens per clip"):
        cached.check_fits(encoder_spec(AVLFormer(config)))
    batch = collate_features([{"video_key": "k", "video_features": torch.zeros(2, 3),
                               "audio_features": torch.ones(4, 5)}])
    assert batch["video_features"].shape == (1, 2, 3) and batch["audio_features"].shape == (1, 4, 5)


@pytest.mark.parametrize("extra, message", [
    (["--splits", "nope"], "no yaml for split 'nope'"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_extract_errors_are_one_line(workspace, tmp_path, capsys, extra, message):
    assert extract(workspace, tmp_path / "features", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_extract_needs_encoders(workspace, tmp_path, capsys):
    code = cli_main(["extract-features", "--data-dir", str(workspace["data"]), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "which encoders?" in err


def test_train_without_extracted_features_says_how_to_make_them(workspace, tmp_path, capsys):
    code = cli_main(["train", *train_flags(workspace, tmp_path / "run"), "--features", str(tmp_path / "none")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "train_32frames.features.h5: no cached features" in last
    assert "avlformer extract-features" in last


def test_resume_with_features_ends_with_the_same_weights(workspace, tmp_path):
    ws = workspace
    out = tmp_path / "features"
    assert extract(ws, out) == 0
    flags = [*train_flags(ws, tmp_path / "straight"), "--features", str(out), "--pretrained-checkpoint",
             str(ws["checkpoint"])]
    assert cli_main(["train", *flags]) == 0
    middle = sorted((tmp_path / "straight").glob("checkpoint-*"))[0]
    config = parse_train_args([*train_flags(ws, tmp_path / "resumed"), "--features", str(out),
                               "--pretrained-checkpoint", str(ws["checkpoint"]), "--resume", str(middle)])
    from avlformer.training.loop import train

    train(config)
    straight, resumed = last_weights(tmp_path / "straight"), last_weights(tmp_path / "resumed")
    assert all(torch.equal(resumed[name], value) for name, value in straight.items())


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_continues(workspace, tmp_path, capsys, monkeypatch):
    out = tmp_path / "features"
    real = AVLFormer.encoder_outputs
    calls = []

    def interrupted_on_second_batch(self, frames, audio):
        calls.append(len(frames))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, frames, audio)

    monkeypatch.setattr(AVLFormer, "encoder_outputs", interrupted_on_second_batch)
    assert extract(workspace, out) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == (f"avlformer extract-features: interrupted; the clips finished so far "
                                            f"are kept under {out / '.work'}; rerun the same command to continue")
    monkeypatch.setattr(AVLFormer, "encoder_outputs", real)
    assert extract(workspace, out) == 0
    assert "(1 computed now, 2 reused)" in capsys.readouterr().out


def test_an_unreadable_model_file_is_named_with_the_reason(workspace, tmp_path, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(range(256)) * 4)
    code = cli_main(["extract-features", "--data-dir", str(workspace["data"]), "--model", str(bad), "--out",
                     str(tmp_path / "features"), "--num-workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"avlformer extract-features: error: {bad}: cannot be read with torch.load")
    assert "Check the documentation" not in err[0]


def test_extract_never_writes_inside_a_checkpoint(workspace, tmp_path, capsys):
    out = workspace["checkpoint"] / "features"
    code = cli_main(["extract-features", "--data-dir", str(workspace["data"]), "--model",
                     str(workspace["checkpoint"]), "--out", str(out), "--num-workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"avlformer extract-features: error: --out {out}: lies inside the checkpoint "
                                 f"folder {workspace['checkpoint']}; give a folder outside it"]
    assert not out.exists()
