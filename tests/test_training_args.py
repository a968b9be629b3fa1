"""`avlformer train` flags: spellings, config-file precedence, dead-flag rejection, derived values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avlformer.training import cli as train_cli
from avlformer.training.args import ArgumentError, parse_train_args

REPO = Path(__file__).resolve().parents[1]


def parse(*argv, world_size=1):
    return parse_train_args(list(argv), world_size=world_size)[0]


def test_underscore_and_hyphen_spellings_are_the_same_flag():
    upstream = parse("--per_gpu_train_batch_size", "3", "--lambda_", "0.3", "--learn_mask_enabled",
                     "--loss_sparse_w=0.25")
    ours = parse("--per-gpu-train-batch-size", "3", "--lambda", "0.3", "--learn-mask-enabled",
                 "--loss-sparse-w=0.25")
    assert vars(upstream) == vars(ours)
    assert (ours.per_gpu_train_batch_size, ours.lambda_, ours.learn_mask_enabled, ours.loss_sparse_w) == \
        (3, 0.3, True, 0.25)


def test_bare_boolean_flag_means_true_and_explicit_false_works():
    assert parse("--evaluate_during_training").evaluate_during_training is True
    assert parse("--evaluate_during_training", "false").evaluate_during_training is False


def test_command_line_beats_config_file_which_beats_defaults(tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"learning_rate": 0.5, "weight_decay": 0.3, "lambda_": 0.2,
                                  "num-train-epochs": 7}))
    args, explicit = parse_train_args(["--config", str(config), "--learning_rate", "0.125"])
    assert args.learning_rate == 0.125          # typed on the command line
    assert args.weight_decay == 0.3             # from the file
    assert args.lambda_ == 0.2 and args.num_train_epochs == 7  # file keys in either spelling
    assert args.adam_epsilon == 1e-8            # default
    assert {"learning_rate", "weight_decay", "lambda_", "num_train_epochs"} <= explicit
    assert "adam_epsilon" not in explicit


def test_config_file_problems_name_the_file_and_key(tmp_path):
    bad_key = tmp_path / "bad.json"
    bad_key.write_text(json.dumps({"learning_rat": 1.0}))
    with pytest.raises(ArgumentError, match=r"bad\.json.*learning_rat"):
        parse("--config", str(bad_key))
    bad_value = tmp_path / "value.json"
    bad_value.write_text(json.dumps({"num_train_epochs": "many"}))
    with pytest.raises(ArgumentError, match=r"value\.json.*num_train_epochs"):
        parse("--config", str(bad_value))
    with pytest.raises(ArgumentError, match="not found"):
        parse("--config", str(tmp_path / "missing.json"))


@pytest.mark.parametrize("argv, flag", [
    (["--use_cbs"], "--use-cbs"),
    (["--scst", "true"], "--scst"),
    (["--patch_size", "16"], "--patch-size"),
    (["--kinetics", "700"], "--kinetics"),
    (["--label_smoothing", "0.1"], "--label-smoothing"),
    (["--restore_ratio", "0.2"], "--restore-ratio"),
    (["--do_test"], "--do-test"),
    (["--att_mode", "full"], "--att-mode"),
])
def test_dead_flags_with_a_non_neutral_value_are_rejected_with_the_reason(argv, flag):
    with pytest.raises(ArgumentError, match=f"{flag}=.*not supported: .+"):
        parse(*argv)


def test_dead_flags_at_their_neutral_value_are_accepted(tmp_path):
    args = parse("--use_cbs", "false", "--kinetics", "600", "--patch_size", "32", "--scst", "0")
    assert args.kinetics == "600"
    config = tmp_path / "upstream.json"  # upstream's own config file carries such keys
    config.write_text(json.dumps({"use_clip_model": True, "grid_feat": True, "pretrained_2d": False,
                                  "restore_ratio": -1, "zero_opt_stage": 1, "mixed_precision_method": "apex"}))
    args = parse("--config", str(config))
    assert args.zero_opt_stage == -1  # reset unless DeepSpeed, as upstream


def test_cli_reports_a_rejected_flag_and_exits_2(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    status = train_cli.main(parser.parse_args(["--use-hypo"]))
    assert status == 2
    assert "--use-hypo" in capsys.readouterr().err


def test_effective_batch_size_sets_the_per_process_batch():
    args = parse("--effective_batch_size", "16", "--gradient_accumulation_steps", "2", world_size=2)
    assert args.per_gpu_train_batch_size == 4
    assert args.per_gpu_eval_batch_size >= 4
    derived = parse("--per_gpu_train_batch_size", "3", "--gradient_accumulation_steps", "2", world_size=4)
    assert derived.effective_batch_size == 24
    with pytest.raises(ArgumentError, match="not divisible"):
        parse("--effective_batch_size", "10", world_size=4)


def test_upstream_precision_flags_map_onto_strategy_and_precision():
    assert parse("--mixed_precision_method", "fairscale").distributed_strategy == "fsdp"
    assert parse("--mixed_precision_method", "deepspeed", "--deepspeed_fp16").precision == "fp16"
    assert parse("--amp_opt_level", "1").precision == "fp16"
    assert parse("--precision", "bf16").precision == "bf16"
    with pytest.raises(ArgumentError, match="contradicts"):
        parse("--mixed_precision_method", "fairscale", "--distributed-strategy", "ddp")
    with pytest.raises(ArgumentError, match="deepspeed"):
        parse("--deepspeed_fp16")


def test_zero_backbone_lr_freezes_the_backbone_and_use_checkpoint_means_video():
    args = parse("--backbone_coef_lr", "0", "--use_checkpoint")
    assert args.freeze_backbone is True
    assert args.activation_checkpointing == ["video"]


def test_inconsistent_values_are_errors():
    with pytest.raises(ArgumentError, match="max-seq-a-length"):
        parse("--max_seq_length", "100", "--max_seq_a_length", "50")
    with pytest.raises(ArgumentError, match="warmup-ratio"):
        parse("--warmup_ratio", "1.5")


def test_paper_config_file_gives_the_paper_model():
    from avlformer.training.model_setup import build_model_config

    args, explicit = parse_train_args(["--config", str(REPO / "configs" / "favd_32frm_default.json")])
    config = build_model_config(args, explicit)
    assert (config.num_frames, config.image_size, config.num_av_tokens) == (32, 224, 1257)
    assert (config.lm_loss_weight, config.sparsity_loss_weight, config.learn_mask_enabled) == (0.1, 0.5, True)
    assert config.video.use_checkpoint is True
    assert (args.learning_rate, args.backbone_coef_lr, args.weight_decay) == (1e-4, 0.05, 0.2)
    assert args.attn_mask_type == "learn_vid_att" and args.max_img_seq_length == 1257


def test_preset_values_apply_unless_a_flag_is_given():
    from avlformer.training.model_setup import build_model_config

    args, explicit = parse_train_args(["--model_preset", "tiny"])
    config = build_model_config(args, explicit)
    assert args.max_num_frames == config.num_frames == 8  # the preset's value, written back for args.json
    args, explicit = parse_train_args(["--model_preset", "tiny", "--max_num_frames", "4", "--lambda_", "0.7"])
    config = build_model_config(args, explicit)
    assert (config.num_frames, config.lm_loss_weight) == (4, 0.7)
    args, explicit = parse_train_args(["--model_preset", "tiny", "--max_img_seq_length", "99"])
    with pytest.raises(ArgumentError, match="visual tokens"):
        build_model_config(args, explicit)
    args, explicit = parse_train_args(["--model_preset", "tiny", "--attn_mask_type", "seq2seq"])
    with pytest.raises(ArgumentError, match="contradicts"):
        build_model_config(args, explicit)  # the tiny preset learns the mask
