"""`avlformer train` flags: spellings, config-file precedence, dead-flag rejection, derived values."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avlformer.training import cli as train_cli
from avlformer.training.args import ArgumentError, parse_train_args
from avlformer.training.flag_table import upstream_values

REPO = Path(__file__).resolve().parents[1]


def parse(*argv, world_size=1):
    return parse_train_args(list(argv), world_size=world_size)


def test_underscore_and_hyphen_spellings_are_the_same_flag():
    upstream = parse("--per_gpu_train_batch_size", "3", "--lambda_", "0.3", "--learn_mask_enabled",
                     "--loss_sparse_w=0.25")
    ours = parse("--per-gpu-train-batch-size", "3", "--lambda", "0.3", "--learn-mask-enabled",
                 "--loss-sparse-w=0.25")
    assert upstream == ours
    assert (ours.optim.per_gpu_train_batch_size, ours.model.lm_loss_weight, ours.model.learn_mask_enabled,
            ours.model.sparsity_loss_weight) == (3, 0.3, True, 0.25)


def test_bare_boolean_flag_means_true_and_explicit_false_works():
    assert parse("--evaluate_during_training").run.evaluate_during_training is True
    assert parse("--evaluate_during_training", "false").run.evaluate_during_training is False


def test_command_line_beats_config_file_which_beats_defaults(tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"learning_rate": 0.5, "weight_decay": 0.3, "lambda_": 0.2,
                                  "num-train-epochs": 7}))
    args = parse_train_args(["--config", str(config), "--learning_rate", "0.125"])
    assert args.optim.learning_rate == 0.125          # typed on the command line
    assert args.optim.weight_decay == 0.3             # from the file
    assert args.model.lm_loss_weight == 0.2 and args.optim.num_train_epochs == 7  # file keys in either spelling
    assert args.optim.adam_epsilon == 1e-8            # default


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
    (["--cider_cached_tokens", "words.p"], "--cider-cached-tokens"),
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
    assert args == parse()  # a neutral value changes nothing
    config = tmp_path / "upstream.json"  # upstream's own config file carries such keys
    config.write_text(json.dumps({"use_clip_model": True, "grid_feat": True, "pretrained_2d": False,
                                  "restore_ratio": -1, "zero_opt_stage": 1, "mixed_precision_method": "apex"}))
    args = parse("--config", str(config))
    assert upstream_values(args)["zero_opt_stage"] == -1  # reset unless DeepSpeed, as upstream
    assert args.run.distributed_strategy == "ddp"  # apex


def test_cli_reports_a_rejected_flag_and_exits_2(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    status = train_cli.main(parser.parse_args(["--use-hypo"]))
    assert status == 2
    assert "--use-hypo" in capsys.readouterr().err


def test_effective_batch_size_sets_the_per_process_batch():
    args = parse("--effective_batch_size", "16", "--gradient_accumulation_steps", "2", world_size=2)
    assert args.optim.per_gpu_train_batch_size == 4
    assert args.optim.per_gpu_eval_batch_size >= 4
    derived = parse("--per_gpu_train_batch_size", "3", "--gradient_accumulation_steps", "2", world_size=4)
    assert derived.optim.effective_batch_size == 24
    with pytest.raises(ArgumentError, match="not divisible"):
        parse("--effective_batch_size", "10", world_size=4)


def test_upstream_precision_flags_map_onto_strategy_and_precision():
    assert parse("--mixed_precision_method", "fairscale").run.distributed_strategy == "fsdp"
    assert parse("--amp_opt_level", "1").run.precision == "fp16"
    assert parse("--precision", "bf16").run.precision == "bf16"
    with pytest.raises(ArgumentError, match="contradicts"):
        parse("--mixed_precision_method", "fairscale", "--distributed-strategy", "ddp")
    with pytest.raises(ArgumentError, match="deepspeed"):
        parse("--deepspeed_fp16")


def test_zero_backbone_lr_freezes_the_backbone_and_use_checkpoint_means_video():
    args = parse("--backbone_coef_lr", "0", "--use_checkpoint")
    assert args.optim.freeze_backbone is True
    assert args.run.activation_checkpointing == ["video"]


def test_inconsistent_values_are_errors():
    with pytest.raises(ArgumentError, match="max-seq-a-length"):
        parse("--max_seq_length", "100", "--max_seq_a_length", "50")
    with pytest.raises(ArgumentError, match="warmup-ratio"):
        parse("--warmup_ratio", "1.5")


def test_paper_config_file_gives_the_paper_model():
    args = parse_train_args(["--config", str(REPO / "configs" / "favd_32frm_default.json")])
    config = args.model
    assert (config.num_frames, config.image_size, config.num_av_tokens) == (32, 224, 1257)
    assert (config.lm_loss_weight, config.sparsity_loss_weight, config.learn_mask_enabled) == (0.1, 0.5, True)
    assert config.video.use_checkpoint is True
    assert (args.optim.learning_rate, args.optim.backbone_coef_lr, args.optim.weight_decay) == (1e-4, 0.05, 0.2)
    recorded = upstream_values(args)  # what log/args.json says, under the original's names
    assert recorded["attn_mask_type"] == "learn_vid_att" and recorded["max_img_seq_length"] == 1257
    assert (recorded["lambda_"], recorded["max_num_frames"], recorded["use_checkpoint"]) == (0.1, 32, True)


def test_preset_values_apply_unless_a_flag_is_given():
    args = parse_train_args(["--model_preset", "tiny"])
    config = args.model
    assert upstream_values(args)["max_num_frames"] == config.num_frames == 8  # the preset's, for args.json
    args = parse_train_args(["--model_preset", "tiny", "--max_num_frames", "4", "--lambda_", "0.7"])
    config = args.model
    assert (config.num_frames, config.lm_loss_weight) == (4, 0.7)
    with pytest.raises(ArgumentError, match="visual tokens"):
        parse_train_args(["--model_preset", "tiny", "--max_img_seq_length", "99"])
    with pytest.raises(ArgumentError, match="contradicts"):
        parse_train_args(["--model_preset", "tiny", "--attn_mask_type", "seq2seq"])  # the tiny preset learns the mask


@pytest.mark.parametrize("value", [2.5, True, "2"])
def test_config_values_of_the_wrong_type_are_errors_naming_file_and_key(tmp_path, value):
    """A JSON 2.5 or true for an integer flag used to train with 2 or 1; a JSON string is not a number either
    (the command line's "2" is, see below)."""
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"per_gpu_train_batch_size": value}))
    if value == "2":  # strings are how argparse hands values over; the file rule is the command-line rule
        assert parse("--config", str(config)).optim.per_gpu_train_batch_size == 2
        return
    with pytest.raises(ArgumentError, match=r"train\.json: key 'per_gpu_train_batch_size' has value .*integer"):
        parse("--config", str(config))


def test_args_json_with_a_word_for_a_number_names_the_key_and_file(tmp_path):
    args_json = tmp_path / "args.json"
    args_json.write_text(json.dumps({"max_num_frames": "lots"}))
    with pytest.raises(ArgumentError, match=r"args\.json: key 'max_num_frames' has value 'lots'"):
        parse("--config", str(args_json))


@pytest.mark.parametrize("argv, message", [
    (["--num-workers", "-1"], "--num-workers must be >= 0"),
    (["--per-gpu-train-batch-size", "0"], "--per-gpu-train-batch-size must be >= 1"),
    (["--per-gpu-eval-batch-size", "0"], "--per-gpu-eval-batch-size must be >= 1"),
    (["--device", "banana"], "--device banana"),
    (["--mask-prob", "1.5"], "--mask-prob must be in"),
    (["--seed", "-3"], "--seed must be in"),
    (["--limited-samples", "0"], "--limited-samples must be"),
    (["--lambda", "2"], "--lambda must be in"),  # a model flag: named, not the model configuration's field
])
def test_bad_numbers_and_devices_are_one_line_errors(argv, message, capsys):
    with pytest.raises(ArgumentError, match=message):
        parse(*argv)
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.main(parser.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_nan_for_a_number_flag_is_rejected():
    with pytest.raises(SystemExit):
        parse("--length-penalty", "nan")


def test_deepspeed_is_a_one_line_error_pointing_to_fsdp():
    for argv in (["--distributed_strategy", "deepspeed"], ["--mixed_precision_method", "deepspeed"],
                 ["--deepspeed_fp16"]):
        with pytest.raises(ArgumentError, match="DeepSpeed is not supported; use --distributed-strategy fsdp"):
            parse(*argv)


def test_relative_paths_in_a_config_file_are_taken_from_its_folder(tmp_path, monkeypatch):
    """`cd /tmp && avlformer train --config <repo>/configs/demo_tiny.json` must find demo_tiny_model.json."""
    monkeypatch.chdir(tmp_path)
    args = parse("--config", str(REPO / "configs" / "demo_tiny.json"), "--output_dir", "typed/out")
    assert Path(args.init.model_config) == REPO / "configs" / "demo_tiny_model.json"
    assert (args.model.image_size, args.model.text.hidden_size) == (64, 64)
    assert args.run.output_dir == "typed/out"  # typed on the command line: from the current directory
    paper = parse("--config", str(REPO / "configs" / "favd_32frm_default.json"))
    assert Path(paper.data.data_dir) == REPO / "datasets"  # the repository's datasets/, from any current folder
    assert paper.run.resume == ""


def test_model_name_or_path_initialises_the_text_transformer_from_a_hf_bert_folder(tmp_path):
    from transformers import BertConfig, BertModel

    from avlformer.data.tokenizer import default_vocab_dir
    from avlformer.modeling.avlformer import AVLFormerConfig
    from avlformer.modeling.text_transformer import hf_bert_to_ours
    from avlformer.training.setup import build_model

    text = AVLFormerConfig.tiny().text
    torch.manual_seed(5)
    bert = BertModel(BertConfig(vocab_size=text.vocab_size, hidden_size=text.hidden_size,
                                num_hidden_layers=text.num_layers, num_attention_heads=text.num_heads,
                                intermediate_size=text.intermediate_size,
                                max_position_embeddings=text.max_position_embeddings,
                                type_vocab_size=text.type_vocab_size), add_pooling_layer=False)
    bert.save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "vocab.txt").write_bytes((default_vocab_dir() / "vocab.txt").read_bytes())
    args = parse("--model_preset", "tiny", "--model_name_or_path", str(tmp_path / "bert"))
    model = build_model(args, torch.device("cpu"))
    expected = hf_bert_to_ours({f"bert.{k}": v for k, v in bert.state_dict().items()})
    own = model.trans_encoder.state_dict()
    assert expected and all(torch.equal(own[k], v) for k, v in expected.items() if k in own)
    assert sum(k in own for k in expected) > 10
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(own[word], bert.embeddings.word_embeddings.weight)
    untouched = build_model(parse("--model_preset", "tiny"), torch.device("cpu")).trans_encoder.state_dict()
    assert not torch.equal(untouched[word], own[word])


def test_training_modules_do_not_import_the_command_layer_or_tensorboard():
    code = ("import sys; import avlformer.training.loop, avlformer.training.args, avlformer.training.setup; "
            "bad = [m for m in ('avlformer.cli', 'torch.utils.tensorboard', 'avlformer.demo') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_model_config_file_may_leave_fields_at_their_defaults(tmp_path):
    from avlformer.modeling.avlformer import AVLFormerConfig

    tiny = AVLFormerConfig.tiny().to_dict()
    left_out = ("num_beams", "length_penalty", "lm_loss_weight", "sparse_mask_soft2hard")
    partial = {key: value for key, value in tiny.items() if key not in left_out}
    (tmp_path / "model.json").write_text(json.dumps(partial))
    args = parse("--model_config", str(tmp_path / "model.json"))
    assert args.model.num_frames == 8
    # the configuration's defaults for what the file left out, recorded as used
    recorded = upstream_values(args)
    assert (recorded["num_beams"], recorded["lambda_"]) == (args.model.num_beams, args.model.lm_loss_weight) == (1, 0.1)
    (tmp_path / "bad.json").write_text(json.dumps({**partial, "num_frames": "many"}))
    with pytest.raises(ArgumentError, match=r"bad\.json: not a valid model configuration"):
        parse("--model_config", str(tmp_path / "bad.json"))
