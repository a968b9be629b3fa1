"""From `avlformer train` flags and a JSON ``--config`` file to one resolved, checked ``TrainConfig``.

Precedence, lowest to highest: flag defaults < model preset (for model-shaping flags) < ``--config`` file <
flags typed on the command line. ``resolve`` is the only place that applies it; the rest of training reads the
plain ``TrainConfig`` it returns. To know what was typed, every flag is declared with ``argparse.SUPPRESS`` as its
default, so the parsed namespace holds only the flags given; the table (``flag_table``) supplies the defaults.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from avlformer.flags import parse_bool
from avlformer.json_files import read_json
from avlformer.training.flag_table import BY_NAME, FLAGS, NO_DEEPSPEED, ArgumentError, Flag, convert, flag_option

__all__ = ["ArgumentError", "TrainConfig", "add_arguments", "load_config_file", "parse_train_args", "resolve",
           "resolve_args"]


class TrainConfig(SimpleNamespace):
    """Every training setting, resolved: one attribute per flag (upstream names) and ``model``, the
    ``AVLFormerConfig`` that the model-shaping flags describe."""

    def flag_values(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if name != "model"}


# ------------------------------------------------------------------------------------------------ the parser

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=argparse.SUPPRESS, help="JSON file of flag values (upstream keys); "
                        "flags typed on the command line win; relative paths in it are taken from its folder")
    compat = parser.add_argument_group("upstream flags kept for compatibility (only their neutral value is "
                                       "accepted)")
    for flag in FLAGS:
        if flag.compat:
            _add_flag(compat, flag, f"{flag.help} (accepted: {flag.accepted[0]!r})")
        else:
            shown = "derived" if flag.default is None else repr(flag.default)
            _add_flag(parser, flag, f"{flag.help} (default: {shown})")


def _add_flag(parser, flag: Flag, help_text: str) -> None:
    kwargs: dict[str, Any] = dict(dest=flag.name, type=flag.type, default=argparse.SUPPRESS, help=help_text)
    if flag.nargs:
        kwargs["nargs"] = flag.nargs
    if flag.nargs == "?":
        kwargs["const"] = True if flag.type is parse_bool else "auto"
    if flag.choices:
        kwargs["choices"] = flag.choices
    parser.add_argument(flag.option, **kwargs)


# ------------------------------------------------------------------------------------------------ config files

def config_key(key: str) -> str:
    """Config files may use either spelling; ``lambda`` and ``lambda_`` are the same key."""
    key = key.replace("-", "_")
    return "lambda_" if key in ("lambda", "lambda_") else key


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The flag values of a ``--config`` file, converted and checked like typed flags. Relative paths in it are
    taken from the file's folder (so the file works from any current directory)."""
    path = Path(path)
    try:
        raw = read_json(path, "--config file")
    except (FileNotFoundError, ValueError) as err:
        raise ArgumentError(str(err)) from None
    if not isinstance(raw, dict):
        raise ArgumentError(f"{path}: a --config file must hold one JSON object of flag values")
    values = {}
    for key, value in raw.items():
        name = config_key(key)
        if name == "config":
            raise ArgumentError(f"{path}: a config file cannot name another config file ('{key}')")
        if name not in BY_NAME:
            raise ArgumentError(f"{path}: unknown key '{key}' (see `avlformer train --help` for the flags)")
        flag = BY_NAME[name]
        try:
            value = convert(flag, value)
        except argparse.ArgumentTypeError as err:
            raise ArgumentError(f"{path}: key '{key}' has value {value!r}: {err}") from None
        if flag.path and value and not (name == "resume" and value == "auto") and not Path(value).is_absolute():
            value = os.path.normpath(path.parent.absolute() / value)
        values[name] = value
    return values


# ------------------------------------------------------------------------------------------------ resolution

def resolve(command_line: dict[str, Any], config_file: dict[str, Any] | None = None, world_size: int = 1,
            model_config=None) -> TrainConfig:
    """Flags typed + ``--config`` values -> the complete, checked training config. ``model_config`` (an
    AVLFormerConfig) replaces the preset as the base, for callers that hand in a ready-made model."""
    from avlformer.training import model_setup

    given = {**(config_file or {}), **command_line}
    values: dict[str, Any] = {flag.name: flag.default for flag in FLAGS}
    tree = model_setup.base_model_tree(given.get("model_preset", values["model_preset"]),
                                       given.get("model_config", ""), model_config)
    values.update(model_setup.preset_flag_values(tree))
    values.update(given)
    check_accepted(values)
    resolve_precision_and_strategy(values)
    resolve_batch_sizes(values, world_size)
    resolve_freezing(values)
    check_numbers(values)
    check_scst(values)
    from avlformer.training.features import check_feature_flags

    check_feature_flags(command_line, values)
    model = model_setup.model_config_from(values, tree)
    values["output_dir"] = values["output_dir"].replace(" ", "_")
    return TrainConfig(**values, model=model)


def check_accepted(values: dict[str, Any]) -> None:
    for flag in FLAGS:
        if flag.accepted is not None and values[flag.name] not in flag.accepted:
            raise ArgumentError(f"{flag.option}={values[flag.name]!r} is not supported: {flag.help} "
                                f"(accepted value: {flag.accepted[0]!r})")
    if values["max_seq_a_length"] != values["max_seq_length"]:
        raise ArgumentError(f"--max-seq-a-length ({values['max_seq_a_length']}) must equal --max-seq-length "
                            f"({values['max_seq_length']}): there is no second text segment")


def resolve_precision_and_strategy(values: dict[str, Any]) -> None:
    """Fold upstream's --mixed_precision_method / --amp_opt_level / --fairscale_fp16 into --distributed_strategy
    and --precision; contradictory combinations are errors rather than a silent pick."""
    method = values["mixed_precision_method"]
    if "deepspeed" in (method, values["distributed_strategy"]):
        option = "--mixed-precision-method" if method == "deepspeed" else "--distributed-strategy"
        raise ArgumentError(f"{option} deepspeed: {NO_DEEPSPEED}")
    if method is not None:
        strategy = {"apex": "ddp", "fairscale": "fsdp"}[method]
        if values["distributed_strategy"] not in (None, strategy):
            raise ArgumentError(f"--mixed-precision-method {method} contradicts --distributed-strategy "
                                f"{values['distributed_strategy']}")
        values["distributed_strategy"] = strategy
    values["distributed_strategy"] = values["distributed_strategy"] or "ddp"
    if values["fairscale_fp16"] and values["distributed_strategy"] != "fsdp":
        raise ArgumentError("--fairscale-fp16 needs --mixed-precision-method fairscale")
    if values["amp_opt_level"] not in (0, 1, 2, 3):
        raise ArgumentError(f"--amp-opt-level must be 0..3, got {values['amp_opt_level']}")
    if values["amp_opt_level"] > 0 or values["fairscale_fp16"]:
        if values["precision"] not in (None, "fp16"):
            raise ArgumentError(f"--precision {values['precision']} contradicts the upstream fp16 flags")
        values["precision"] = "fp16"
    values["precision"] = values["precision"] or "fp32"
    values["zero_opt_stage"] = -1  # upstream's basic_check_arguments did the same without DeepSpeed


def resolve_batch_sizes(values: dict[str, Any], world_size: int) -> None:
    """--effective_batch_size = per-process batch x processes x accumulation steps."""
    if values["debug"]:
        values.update(per_gpu_train_batch_size=1, per_gpu_eval_batch_size=1, num_train_epochs=1, logging_steps=5)
    accumulation = values["gradient_accumulation_steps"]
    if accumulation < 1:
        raise ArgumentError(f"--gradient-accumulation-steps must be >= 1, got {accumulation}")
    if values["effective_batch_size"] > 0:
        per_step = world_size * accumulation
        if values["effective_batch_size"] % per_step:
            raise ArgumentError(f"--effective-batch-size {values['effective_batch_size']} is not divisible by "
                                f"processes x accumulation steps = {world_size} x {accumulation}")
        values["per_gpu_train_batch_size"] = values["effective_batch_size"] // per_step
    elif values["effective_batch_size"] == 0:
        raise ArgumentError("--effective-batch-size must be > 0 (or -1: per-process batch x processes x "
                            "accumulation steps)")
    if values["per_gpu_train_batch_size"] < 1:
        raise ArgumentError(f"--per-gpu-train-batch-size must be >= 1, got {values['per_gpu_train_batch_size']}")
    if values["per_gpu_eval_batch_size"] < 1:
        raise ArgumentError(f"--per-gpu-eval-batch-size must be >= 1, got {values['per_gpu_eval_batch_size']}")
    values["effective_batch_size"] = values["per_gpu_train_batch_size"] * world_size * accumulation
    # Upstream raised the eval batch to at least the train batch.
    values["per_gpu_eval_batch_size"] = max(values["per_gpu_eval_batch_size"], values["per_gpu_train_batch_size"])


def resolve_freezing(values: dict[str, Any]) -> None:
    if values["backbone_coef_lr"] == 0:
        values["freeze_backbone"] = True  # upstream: a zero backbone lr means a frozen backbone
    if values["use_checkpoint"] and "video" not in values["activation_checkpointing"]:
        values["activation_checkpointing"] = list(values["activation_checkpointing"]) + ["video"]


def _check(ok: bool, name: str, rule: str, values: dict[str, Any]) -> None:
    if not ok:
        raise ArgumentError(f"{flag_option(name)} must be {rule}, got {values[name]!r}")


def check_numbers(values: dict[str, Any]) -> None:
    v = values
    for name in ("num_train_epochs", "logging_steps", "max_num_frames", "img_res", "num_beams", "max_gen_length",
                 "max_seq_length"):
        _check(v[name] >= 1, name, ">= 1", v)
    _check(v["num_workers"] >= 0, "num_workers", ">= 0", v)
    _check(v["max_masked_tokens"] >= 0, "max_masked_tokens", ">= 0", v)
    _check(v["limited_samples"] == -1 or v["limited_samples"] >= 1, "limited_samples", ">= 1 (or -1: all)", v)
    _check(0 <= v["seed"] < 2**32, "seed", "in [0, 2**32)", v)
    _check(0 <= v["mask_prob"] <= 1, "mask_prob", "in [0, 1]", v)
    _check(0 <= v["warmup_ratio"] < 1, "warmup_ratio", "in [0, 1)", v)
    _check(0 <= v["lambda_"] <= 1, "lambda_", "in [0, 1]", v)
    _check(0 <= v["drop_out"] < 1, "drop_out", "in [0, 1)", v)
    _check(v["learning_rate"] > 0, "learning_rate", "> 0", v)
    _check(v["adam_epsilon"] > 0, "adam_epsilon", "> 0", v)
    for name in ("backbone_coef_lr", "weight_decay", "min_lr", "loss_sparse_w"):
        _check(v[name] >= 0, name, ">= 0", v)
    from avlformer.device import resolve_device

    try:
        resolve_device(v["device"], None)
    except ValueError as err:
        raise ArgumentError(str(err)) from None


SCST_ONLY = ("sc_train_sample_n", "sc_baseline_type", "temperature", "top_k", "top_p")


def check_scst(values: dict[str, Any]) -> None:
    """The sampling and baseline flags act only with --scst: given without it they would be silently ignored."""
    if not values["scst"]:
        for name in SCST_ONLY:
            if values[name] != BY_NAME[name].default:
                raise ArgumentError(f"{flag_option(name)}={values[name]!r} applies only to self-critical training: "
                                    "add --scst (validation always decodes deterministically)")
        return
    v = values
    _check(v["sc_train_sample_n"] >= 1, "sc_train_sample_n", ">= 1", v)
    if v["sc_baseline_type"] == "sample" and v["sc_train_sample_n"] < 2:
        raise ArgumentError("--sc-baseline-type sample (the mean reward of a video's other samples) needs "
                            f"--sc-train-sample-n >= 2, got {v['sc_train_sample_n']}; or use --sc-baseline-type "
                            "greedy")
    _check(v["temperature"] > 0, "temperature", "> 0", v)
    _check(v["top_k"] >= 0, "top_k", ">= 0 (0: no top-k filter)", v)
    _check(0 < v["top_p"] <= 1, "top_p", "in (0, 1]", v)
    if v["distributed_strategy"] != "ddp":
        raise ArgumentError(f"--scst cannot be combined with --distributed-strategy {v['distributed_strategy']}: "
                            "sampling calls the model's parts directly, which FSDP shards; use ddp (the default)")


def resolve_args(namespace: argparse.Namespace, world_size: int = 1, model_config=None) -> TrainConfig:
    """A parsed namespace (only the flags given, plus ``config``) -> the resolved ``TrainConfig``."""
    command_line = {k: v for k, v in vars(namespace).items() if not k.startswith("_") and k != "config"}
    config_path = getattr(namespace, "config", None)
    from_file = load_config_file(config_path) if config_path else {}
    return resolve(command_line, from_file, world_size, model_config)


def parse_train_args(argv: list[str], world_size: int = 1, model_config=None) -> TrainConfig:
    """For programmatic use (demo, tests): argv in either spelling -> the resolved ``TrainConfig``."""
    from avlformer.flags import normalize_flag_spelling

    parser = argparse.ArgumentParser(prog="avlformer train")
    add_arguments(parser)
    return resolve_args(parser.parse_args(normalize_flag_spelling(list(argv))), world_size, model_config)
