"""Options that change what training does: precision, freezing, activation checkpointing, sample limits,
weight initialisation, and that an interrupted checkpoint save leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from avlformer.training import checkpointing, loop
from avlformer.training.args import ArgumentError, parse_train_args
from avlformer.training.setup import build_model
from training_fakes import FakeCaptionDataset, deterministic_tiny_config, tiny_model

torch.set_num_threads(1)


def short_run(output_dir: Path, *flags: str, samples: int = 4, model=None):
    config = deterministic_tiny_config()
    argv = ["--output-dir", str(output_dir), "--per-gpu-train-batch-size", "2", "--num-train-epochs", "1",
            "--learning-rate", "1e-3", "--backbone-coef-lr", "1", "--num-workers", "0", "--device", "cpu",
            "--logging-steps", "1", "--save-steps", "1", *flags]
    args = parse_train_args(argv, model_config=config)
    model = model or tiny_model(config)
    result = loop.train(args, model=model, train_dataset=FakeCaptionDataset(config, samples))
    return result, model


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_keeps_fp32_master_weights(tmp_path, precision):
    model = tiny_model()
    linear = next(m for m in model.trans_encoder.modules() if isinstance(m, torch.nn.Linear))
    seen = []
    linear.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    result, model = short_run(tmp_path, "--precision", precision, model=model)
    assert seen and set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float16}  # autocast ran
    assert result.global_step == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = torch.load(result.last_checkpoint / checkpointing.TRAINING_STATE, weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # a loss scaler only for fp16


def test_freeze_backbone_and_passt_leave_those_weights_untouched(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    short_run(tmp_path, "--freeze_backbone", "--freeze_passt", model=model)
    after = load_file(str(tmp_path / "checkpoint-1-2" / "model.safetensors"))
    frozen = [k for k in before if k.startswith(("swin.", "passt."))]
    trained = [k for k in before if k.startswith("trans_encoder.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_freezing_flags_apply_to_built_models():
    args = parse_train_args(["--model_preset", "tiny", "--freeze_embedding", "--backbone_coef_lr", "0",
                             "--activation-checkpointing", "audio", "text", "--use_checkpoint"])
    config = args.model
    assert config.video.use_checkpoint and config.audio.use_checkpoint
    model = build_model(args, torch.device("cpu"))
    assert not any(p.requires_grad for p in model.swin.parameters())  # backbone_coef_lr 0 freezes it
    frozen_text = {n for n, p in model.trans_encoder.named_parameters() if not p.requires_grad}
    assert frozen_text and all("word_embeddings" in n for n in frozen_text)


def test_limited_samples_shortens_the_epoch(tmp_path):
    result, _ = short_run(tmp_path, "--limited_samples", "2", samples=8)
    assert result.global_step == 1


def test_pretrained_checkpoint_initialises_all_weights(tmp_path):
    source, _ = short_run(tmp_path / "source")
    config = deterministic_tiny_config()
    args = parse_train_args(["--pretrained_checkpoint", str(source.last_checkpoint)], model_config=config)
    model = build_model(args, torch.device("cpu"))
    expected = load_file(str(source.last_checkpoint / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_save_that_fails_midway_leaves_no_checkpoint_and_the_previous_one_intact(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, handle, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's training_state.pt
            handle.write(b"partial")
            raise OSError("disk full")
        return real_save(obj, handle, *a, **k)

    monkeypatch.setattr(checkpointing.torch, "save", failing_save)
    with pytest.raises(checkpointing.CheckpointSaveError, match=r"could not write checkpoint .*checkpoint-1-2 "
                       r"\(disk full\); the last checkpoint .*checkpoint-0-1 is intact"):
        short_run(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != "log")
    assert names == ["checkpoint-0-1"]  # no checkpoint-1-2, no temporary folder
    state = torch.load(tmp_path / "checkpoint-0-1" / checkpointing.TRAINING_STATE, weights_only=True)
    assert state["progress"]["global_step"] == 1


def deterministic_run(output_dir: Path, *flags: str):
    model = tiny_model()
    seen = []
    model.register_forward_hook(lambda *_: seen.append((torch.get_num_threads(),
                                                        torch.are_deterministic_algorithms_enabled())))
    result, _ = short_run(output_dir, "--save-steps", "-1", *flags, model=model)
    return load_file(str(result.last_checkpoint / "model.safetensors")), seen


def test_deterministic_runs_give_identical_weights_with_several_threads(tmp_path):
    torch.set_num_threads(2)  # several threads split float reductions in an order that can vary
    try:
        first, seen = deterministic_run(tmp_path / "a", "--deterministic")
        second, _ = deterministic_run(tmp_path / "b", "--deterministic")
        assert set(seen) == {(1, True)}  # one intra-op thread and deterministic kernels during the run
        assert torch.get_num_threads() == 2 and not torch.are_deterministic_algorithms_enabled()  # restored
    finally:
        torch.set_num_threads(1)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_a_batch_larger_than_the_training_set_is_a_one_line_error(tmp_path):
    with pytest.raises(ArgumentError, match=r"training set has 4 samples.*--per-gpu-train-batch-size 8"):
        short_run(tmp_path, "--per-gpu-train-batch-size", "8", samples=4)


def test_flags_that_cannot_apply_to_a_given_model_are_errors(tmp_path):
    config = deterministic_tiny_config()
    args = parse_train_args(["--output-dir", str(tmp_path), "--device", "cpu", "--max_num_frames", "4",
                             "--per-gpu-train-batch-size", "2"], model_config=config)
    with pytest.raises(ArgumentError, match="num_frames: model 8, flags 4"):
        loop.train(args, model=tiny_model(config), train_dataset=FakeCaptionDataset(config, 4))


def test_the_model_is_described_with_its_size_before_it_is_built(tmp_path, monkeypatch, capsys):
    """Without --model-config the paper model is built; the log says so, with its size, before building."""
    class Stop(Exception):
        pass

    def refuse(*_):
        raise Stop

    monkeypatch.setattr(loop, "build_model", refuse)
    args = parse_train_args(["--output-dir", str(tmp_path), "--device", "cpu", "--per-gpu-train-batch-size", "2"])
    with pytest.raises(Stop):
        loop.train(args, train_dataset=FakeCaptionDataset(deterministic_tiny_config(), 4))
    err = capsys.readouterr().err
    assert "building the model from the paper preset" in err
    assert "32 frames at 224 px" in err and " M parameters" in err and "needs tens of GB" in err
