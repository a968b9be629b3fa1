"""`avlformer train --scst` on CPU with the tiny model: flags, the logged terms, exact resume, the greedy baseline,
and two DDP processes matching one."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from avlformer.training import loop, trainer
from avlformer.training.args import parse_train_args
from avlformer.training.flag_table import ArgumentError
from avlformer.training.scst import baseline_from_samples, reference_table
from training_fakes import CAPTIONS, FakeCaptionDataset, ReferencedDataset, deterministic_tiny_config, tiny_model

FLAGS = ["--num-train-epochs", "1", "--learning-rate", "1e-3", "--backbone-coef-lr", "0.5", "--num-workers", "0",
         "--device", "cpu", "--logging-steps", "1", "--seed", "3", "--scst", "--sc-train-sample-n", "3",
         "--max-gen-length", "8"]


def policy_model(config):
    """The tiny model with its LM head leaning towards the captions' words and [SEP]: a random head samples from
    30k tokens and every reward (hence every gradient) would be 0."""
    from avlformer.data.tokenizer import load_tokenizer

    model = tiny_model(config)
    words = {i for caption in CAPTIONS for i in load_tokenizer()(caption, add_special_tokens=False)["input_ids"]}
    with torch.no_grad():
        model.trans_encoder.cls.predictions.bias[sorted(words)] += 9.0
        model.trans_encoder.cls.predictions.bias[102] += 8.0
    return model


def run(output_dir, *flags, samples=4, batch="2", val_size=0):
    config = deterministic_tiny_config()
    args = parse_train_args(FLAGS + ["--output-dir", str(output_dir), "--per-gpu-train-batch-size", batch, *flags],
                            model_config=config)
    torch.set_num_threads(1)
    val = FakeCaptionDataset(config, val_size, is_train=False) if val_size else None
    return loop.train(args, model=policy_model(config), train_dataset=ReferencedDataset(config, samples),
                      val_dataset=val)


def test_scst_flags_are_checked():
    parse = lambda *argv: parse_train_args(list(argv))  # noqa: E731
    with pytest.raises(ArgumentError, match="--temperature=0.5 applies only to self-critical training"):
        parse("--temperature", "0.5")
    with pytest.raises(ArgumentError, match="--sc-train-sample-n >= 2"):
        parse("--scst", "--sc-train-sample-n", "1")
    with pytest.raises(ArgumentError, match="--top-p must be in"):
        parse("--scst", "--top-p", "0")
    with pytest.raises(ArgumentError, match="--scst-xe-weight=0.5 applies only to self-critical training"):
        parse("--scst-xe-weight", "0.5")
    with pytest.raises(ArgumentError, match="--scst-xe-weight must be >= 0"):
        parse("--scst", "--scst-xe-weight", "-1")
    with pytest.raises(ArgumentError, match="--scst cannot be combined with --distributed-strategy fsdp"):
        parse("--scst", "--distributed-strategy", "fsdp")
    args = parse("--scst", "--sc-train-sample-n", "1", "--sc-baseline-type", "greedy", "--top-k", "5")
    assert (args.scst.enabled, args.scst.sample_n, args.scst.baseline_type, args.scst.top_k) == \
        (True, 1, "greedy", 5)
    assert parse("--scst").scst.baseline_type == "sample"


def test_the_cross_entropy_anchor_adds_its_gradient_to_the_self_critical_one(tmp_path, monkeypatch):
    """--scst-xe-weight w: a step's gradient is the self-critical one plus w times the cross-entropy step's on the
    same batch (its sparsity term left out: the self-critical loss carries it once)."""
    recorded = []
    optimizer_step = trainer.Trainer.optimizer_step

    def record(self, outputs):
        recorded.append({n: p.grad.clone() for n, p in self.library_model.named_parameters() if p.grad is not None})
        return optimizer_step(self, outputs)

    monkeypatch.setattr(trainer.Trainer, "optimizer_step", record)
    run(tmp_path / "scst", samples=2)
    run(tmp_path / "mixed", "--scst-xe-weight", "0.5", samples=2)
    config = deterministic_tiny_config()
    start = FLAGS.index("--scst")
    xe_flags = FLAGS[:start] + FLAGS[start + 3:]  # without --scst --sc-train-sample-n 3
    args = parse_train_args(xe_flags + ["--output-dir", str(tmp_path / "xe"), "--per-gpu-train-batch-size", "2"],
                            model_config=config)
    loop.train(args, model=policy_model(config), train_dataset=ReferencedDataset(config, 2))
    scst, mixed, xe = recorded
    assert "learn_vid_att.weight" in xe  # the sparsity term's only parameter, left out of the comparison
    compared = [n for n in xe if n != "learn_vid_att.weight"]
    assert any(xe[n].abs().max() > 1e-4 for n in compared)
    for name in compared:
        assert torch.allclose(mixed[name] - scst[name], 0.5 * xe[name], atol=1e-6, rtol=1e-4), name
    assert "train/xe_loss" in _scalars(tmp_path / "mixed" / "log")
    assert "train/xe_loss" not in _scalars(tmp_path / "scst" / "log")


def test_leave_one_out_baseline():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert baseline_from_samples(rewards, 3).tolist() == [4.0, 3.5, 1.5, 1.5, 1.5, 0.0]


def test_a_dataset_without_references_is_a_clear_error(tmp_path):
    with pytest.raises(ArgumentError, match="--scst needs the training split's reference captions"):
        reference_table(FakeCaptionDataset(deterministic_tiny_config(), 2))
    config = deterministic_tiny_config()
    args = parse_train_args(FLAGS + ["--output-dir", str(tmp_path), "--per-gpu-train-batch-size", "2"],
                            model_config=config)
    with pytest.raises(ArgumentError, match="reference captions"):
        loop.train(args, model=tiny_model(config), train_dataset=FakeCaptionDataset(config, 4))


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_scst_trains_logs_its_terms_and_resumes_exactly(tmp_path):
    straight = run(tmp_path / "straight", "--save-steps", "1")
    assert straight.global_step == 2
    scalars = _scalars(tmp_path / "straight" / "log")
    for tag in ("train/loss", "train/reward", "train/baseline", "train/caption_length", "train/reference_length",
                "train/entropy", "train/repeated_4gram", "train/grad_norm"):
        assert len(scalars[tag]) == 2, tag
    assert "train/greedy_reward" not in scalars and "train/lm_loss" not in scalars
    assert scalars["train/reference_length"][0] == pytest.approx(12.0)  # "a red square ... steadily" etc.
    assert all(value > 0 for value in scalars["train/entropy"])
    assert all(value > 0 for value in scalars["train/reward"])  # rewards (and so gradients) are not all zero
    assert all(0 < value <= 7 for value in scalars["train/caption_length"])  # max_gen_length 8 = 6 words + [SEP]
    first = load_file(str(tmp_path / "straight" / "checkpoint-0-1" / "model.safetensors"))
    final = load_file(str(straight.last_checkpoint / "model.safetensors"))
    assert any(not torch.equal(first[n], final[n]) for n in final)  # the policy gradient moved the weights

    resumed = run(tmp_path / "resumed", "--resume", str(tmp_path / "straight" / "checkpoint-0-1"))
    assert resumed.global_step == 2
    again = load_file(str(resumed.last_checkpoint / "model.safetensors"))
    for name in final:
        assert torch.equal(final[name], again[name]), name


def test_greedy_baseline_runs_and_logs_the_greedy_reward(tmp_path):
    result = run(tmp_path, "--sc-baseline-type", "greedy", "--sc-train-sample-n", "1", samples=2)
    assert result.global_step == 1
    scalars = _scalars(tmp_path / "log")
    assert scalars["train/greedy_reward"] == scalars["train/baseline"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, output_dir: str) -> None:
    import os

    from avlformer.training.distributed import init_distributed, teardown_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    config = deterministic_tiny_config()
    args = parse_train_args(FLAGS + ["--output-dir", output_dir, "--per-gpu-train-batch-size", "1"],
                            world_size=world_size, model_config=config)
    env = init_distributed("cpu")
    try:
        loop.train(args, env, model=policy_model(config), train_dataset=ReferencedDataset(config, 4))
    finally:
        teardown_distributed()


def test_ddp_two_processes_match_one_process(tmp_path):
    """Samples are tied to the video and gradients averaged over ranks: 2 x batch 1 == 1 x batch 2."""
    one = run(tmp_path / "one")
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True,
                       start_method=start_method)
    expected = load_file(str(one.last_checkpoint / "model.safetensors"))
    actual = load_file(str(tmp_path / "two" / one.last_checkpoint.name / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=2e-5, msg=name)


def test_scst_encodes_cached_features_like_the_media_they_came_from():
    from avlformer.modeling.avlformer import FEATURE_KEYS

    config = deterministic_tiny_config()
    model = tiny_model(config).eval()
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(2, config.num_frames, 3, config.image_size, config.image_size, generator=gen)
    audio = 0.1 * torch.randn(2, 1, config.audio.clip_samples, generator=gen)
    with torch.no_grad():
        video, sound = model.encoder_outputs(frames, audio)
        from_features = model.batch_av_tokens({FEATURE_KEYS[0]: video, FEATURE_KEYS[1]: sound})
        from_media = model.batch_av_tokens({"frames": frames, "audio": audio})
    torch.testing.assert_close(from_features, from_media)


def test_scst_runs_under_bf16_autocast(tmp_path):
    result = run(tmp_path, "--precision", "bf16", samples=2)
    assert result.global_step == 1
    scalars = _scalars(tmp_path / "log")
    assert all(torch.isfinite(torch.tensor(scalars[tag])).all() for tag in ("train/loss", "train/entropy"))


def test_scst_validates_by_cider_and_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    scores = iter([0.4, 0.1])
    monkeypatch.setattr(trainer, "score", lambda predictions, references: ({"CIDEr": next(scores)}, None))
    result = run(tmp_path, "--evaluate-during-training", "--save-steps", "1", val_size=2)
    assert result.best["checkpoint"] == "checkpoint-0-1" and result.best["score"] == 0.4
    assert "valid/CIDEr" in _scalars(tmp_path / "log")
