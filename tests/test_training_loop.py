"""The training loop on CPU with the tiny model: exact resume, gradient accumulation, save_steps, NaN stop,
best-by-CIDEr, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from avlformer.data.recipe import RECIPE_NAME
from avlformer.modeling.avlformer import AVLFormerConfig
from avlformer.training import loop, trainer
from avlformer.training.args import parse_train_args
from avlformer.training.trainer import EpochBatchSampler
from avlformer.training.checkpointing import TRAINING_STATE, ResumeError
from training_fakes import FakeCaptionDataset, deterministic_tiny_config, tiny_model

torch.set_num_threads(1)


def run(output_dir: Path, *flags: str, config: AVLFormerConfig | None = None, samples: int = 8,
        val: bool = False, nan_index: int | None = None, same_caption: bool = False):
    config = config or deterministic_tiny_config()
    argv = ["--output-dir", str(output_dir), "--per-gpu-train-batch-size", "2", "--num-train-epochs", "2",
            "--learning-rate", "1e-3", "--backbone-coef-lr", "0.5", "--num-workers", "0", "--device", "cpu",
            "--logging-steps", "2", "--save-steps", "3", "--seed", "7", *flags]
    args = parse_train_args(argv, model_config=config)
    train_set = FakeCaptionDataset(config, samples, nan_index=nan_index, same_caption=same_caption)
    val_set = FakeCaptionDataset(config, 3, is_train=False) if val else None
    return loop.train(args, model=tiny_model(config), train_dataset=train_set, val_dataset=val_set)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def checkpoint_names(output_dir: Path) -> list[str]:
    return sorted(p.name for p in output_dir.iterdir() if p.name.startswith("checkpoint-"))


def test_resume_continues_exactly_with_all_training_randomness_on(tmp_path):
    """N steps straight == k steps, a fresh process state restored from checkpoint k, then on to N. The tiny
    preset keeps dropout, drop path, SpecAugment, mel jitter and patchout on, so RNG restore is exercised."""
    config = AVLFormerConfig.tiny()
    config = AVLFormerConfig.from_dict({**config.to_dict(), "max_seq_length": 24, "max_gen_length": 8})
    straight = run(tmp_path / "straight", config=config)
    assert straight.global_step == 8
    # save_steps=3 with 4 steps per epoch: a mid-epoch checkpoint, then one across the epoch boundary, and the end
    assert checkpoint_names(tmp_path / "straight") == ["checkpoint-0-3", "checkpoint-1-6", "checkpoint-2-8"]
    state = torch.load(tmp_path / "straight" / "checkpoint-0-3" / TRAINING_STATE, weights_only=True)
    assert state["progress"] == {"global_step": 3, "epoch": 0, "batches_done_in_epoch": 3}

    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "straight" / "checkpoint-0-3"), config=config)
    assert resumed.global_step == 8
    assert checkpoint_names(tmp_path / "resumed") == ["checkpoint-1-6", "checkpoint-2-8"]
    final_a, final_b = weights(straight.last_checkpoint), weights(resumed.last_checkpoint)
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), name
    # and the run really moved the weights
    start = weights(tmp_path / "straight" / "checkpoint-0-3")
    assert any(not torch.equal(start[n], final_a[n]) for n in final_a)


def test_resume_auto_picks_the_latest_checkpoint_and_finishes(tmp_path):
    out = tmp_path / "run"
    run(out, "--num-train-epochs", "1")
    again = run(out, "--num-train-epochs", "1", "--resume")  # bare --resume = auto
    assert again.global_step == 4
    assert again.last_checkpoint.name == "checkpoint-1-4"
    log_text = (out / "log" / "log.txt").read_text()
    assert "resumed from" in log_text and "checkpoint-1-4" in log_text


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    """2 micro-batches of 2 with accumulation == one batch of 4 (equal caption lengths, so token-mean losses agree)."""
    big = run(tmp_path / "big", "--per-gpu-train-batch-size", "4", same_caption=True)
    accumulated = run(tmp_path / "acc", "--gradient-accumulation-steps", "2", same_caption=True)
    assert big.global_step == accumulated.global_step == 4
    a, b = weights(big.last_checkpoint), weights(accumulated.last_checkpoint)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_save_steps_sets_the_checkpoints_and_args_json_records_the_run(tmp_path):
    out = tmp_path / "run"
    run(out, "--save-steps", "2", "--weight-decay", "0.07")
    assert checkpoint_names(out) == ["checkpoint-0-2", "checkpoint-1-4", "checkpoint-1-6", "checkpoint-2-8"]
    args = json.loads((out / "log" / "args.json").read_text())
    assert args["save_steps"] == 2 and args["weight_decay"] == 0.07
    assert args["max_global_step"] == 8 and args["global_iters_per_epoch"] == 4 and args["num_gpus"] == 1
    assert list(args) == sorted(args)
    folder = out / "checkpoint-0-2"
    assert {"model.safetensors", "config.json", "vocab.txt", TRAINING_STATE} <= {p.name for p in folder.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    config = deterministic_tiny_config()
    batches = list(EpochBatchSampler(8, 2, rank=0, world_size=1, seed=7, epoch=0, num_batches=4))
    poisoned = batches[2][0]  # a sample of the third optimizer step
    out = tmp_path / "run"
    with pytest.raises(loop.NonFiniteLossError) as caught:
        run(out, "--save-steps", "1", config=config, nan_index=poisoned)
    message = str(caught.value)
    assert "NaN/inf" in message and "optimizer step 3" in message
    assert "checkpoint-0-2" in message and "--resume" in message
    assert checkpoint_names(out) == ["checkpoint-0-1", "checkpoint-0-2"]
    good = weights(out / "checkpoint-0-2")
    assert all(torch.isfinite(t).all() for t in good.values())
    state = torch.load(out / "checkpoint-0-2" / TRAINING_STATE, weights_only=True)
    assert state["progress"]["global_step"] == 2


def test_validation_keeps_the_best_checkpoint_by_cider_and_logs_scalars(tmp_path, monkeypatch):
    scores = iter([0.2, 0.5, 0.3])

    def fake_score(predictions, references):
        assert set(predictions) == set(references) == {f"val/{i}.mp4" for i in range(3)}
        return {"CIDEr": next(scores), "Bleu_4": 0.1}, None

    monkeypatch.setattr(trainer, "score", fake_score)  # the real metrics need Java and take tens of seconds
    out = tmp_path / "run"
    result = run(out, "--evaluate-during-training", val=True)
    assert result.best["checkpoint"] == "checkpoint-1-6" and result.best["score"] == 0.5
    best = out / "best_checkpoint"
    for name in ("model.safetensors", TRAINING_STATE, RECIPE_NAME):
        assert (best / name).read_bytes() == (out / "checkpoint-1-6" / name).read_bytes()
    card = (best / "README.md").read_text()  # the best checkpoint's model card carries its validation numbers
    front_matter = yaml.safe_load(card.split("---")[1])
    results = front_matter["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]}["cider"] == 0.5
    assert front_matter["model-index"][0]["name"] == "run"
    assert "per_gpu_train_batch_size" in card and "| `stored_frames` |" in card
    history = json.loads((out / "metadata_val_32frames.yamleval_logs.json").read_text())
    assert [h["CIDEr"] for h in history] == [0.2, 0.5, 0.3]
    assert [h["best_CIDEr"] for h in history] == [0.2, 0.5, 0.5]
    predictions = json.loads((out / "checkpoint-0-3" / "pred.metadata.val_32frames.beam1.max8_coco_format.json")
                             .read_text())
    assert {p["image_id"] for p in predictions} == {"val/0.mp4", "val/1.mp4", "val/2.mp4"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "log"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lm_loss", "train/mlm_loss", "train/sparsity_loss", "train/grad_norm",
                "train/samples_per_sec", "train/memory_mb", "train/lr_backbone_decay", "train/lr_decay",
                "train/lr_no_decay", "train/lr_backbone_no_decay", "valid/CIDEr"}
    assert expected <= tags
    lrs = {e.step: e.value for e in events.Scalars("train/lr_decay")}
    backbone = {e.step: e.value for e in events.Scalars("train/lr_backbone_decay")}
    assert backbone[4] == pytest.approx(lrs[4] * 0.5)


@pytest.mark.parametrize("damaged", ["model.safetensors", TRAINING_STATE])
def test_a_damaged_latest_checkpoint_is_named_and_resume_falls_back_to_the_newest_intact_one(tmp_path, damaged,
                                                                                              capsys):
    out = tmp_path / "run"
    run(out, "--num-train-epochs", "1")  # checkpoint-0-3 and checkpoint-1-4
    latest, intact = out / "checkpoint-1-4", out / "checkpoint-0-3"
    uninterrupted = (latest / "model.safetensors").read_bytes()
    broken = latest / damaged
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])

    with pytest.raises(ResumeError) as caught:  # asked for that very checkpoint: stop, with the one that works
        run(out, "--num-train-epochs", "1", "--resume", str(latest))
    message = str(caught.value)
    assert f"{broken}: damaged or incomplete" in message and message.endswith(f"--resume {intact}")
    assert "\n" not in message

    capsys.readouterr()
    again = run(out, "--num-train-epochs", "1", "--resume", "auto")
    err = capsys.readouterr().err
    assert f"{broken}: damaged or incomplete" in err
    assert f"resuming from {intact}, the newest intact checkpoint" in err
    assert again.global_step == 4
    assert (latest / "model.safetensors").read_bytes() == uninterrupted  # rewritten, as the run never broke


def test_ctrl_c_stops_with_the_exact_resume_flag_and_that_resume_finishes(tmp_path, monkeypatch):
    real_step = loop.Trainer.optimizer_step

    def interrupted_step(self, outputs):
        if self.progress.global_step == 4:
            raise KeyboardInterrupt
        return real_step(self, outputs)

    monkeypatch.setattr(loop.Trainer, "optimizer_step", interrupted_step)
    out = tmp_path / "run"
    with pytest.raises(loop.TrainingInterrupted) as caught:
        run(out)
    checkpoint = (out / "checkpoint-0-3").absolute()
    assert str(caught.value) == (f"interrupted at optimizer step 4 of 8; the last checkpoint is {checkpoint}: "
                                 f"rerun the same command with --resume {checkpoint}")
    monkeypatch.setattr(loop.Trainer, "optimizer_step", real_step)
    assert run(out, "--resume", str(checkpoint)).global_step == 8


def test_ctrl_c_in_the_command_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    import argparse

    from avlformer.training import cli as train_cli

    def interrupted(*_, **__):
        raise loop.TrainingInterrupted(5, 8, tmp_path / "checkpoint-0-4")

    monkeypatch.setattr(train_cli, "train", interrupted)
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    status = train_cli.main(parser.parse_args(["--device", "cpu", "--output-dir", str(tmp_path)]))
    err = capsys.readouterr().err
    assert status == 130
    assert err.strip().splitlines() == [f"avlformer train: interrupted at optimizer step 5 of 8; the last "
                                        f"checkpoint is {tmp_path / 'checkpoint-0-4'}: rerun the same command "
                                        f"with --resume {tmp_path / 'checkpoint-0-4'}"]
