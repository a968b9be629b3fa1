"""From `avlformer train` flags and a JSON ``--config`` file to one resolved, checked ``TrainConfig``.

Precedence, lowest first: the tree's defaults < ``--config`` file < flags typed; ``resolve`` applies it. Flags
default to ``argparse.SUPPRESS`` so the namespace holds only the flags given.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

from avlformer.device import resolve_device
from avlformer.flags import normalize_flag_spelling, parse_bool
from avlformer.json_files import read_json
from avlformer.modeling.avlformer import AVLFormerConfig
from avlformer.training.config import PRESETS, SECTIONS, ScstSettings, TrainConfig
from avlformer.training.features import check_feature_flags
from avlformer.training.part_flags import choose_parts
from avlformer.training.flag_table import (ANY, BY_NAME, COMPAT, FLAGS, NO_DEEPSPEED, ArgumentError, Flag,
                                           as_argument_error, config_key, convert, converter_of, derived_values,
                                           flag_option, upstream_values)

__all__ = ["ArgumentError", "TrainConfig", "add_arguments", "load_config_file", "parse_train_args", "resolve",
           "resolve_args"]

DEFAULTS = {name: TrainConfig(model=preset()) for name, preset in PRESETS.items()}


def converter_for(flag: Flag) -> Callable:
    """The flag's own type, else its field's: the type of the field's default (the tree's defaults are typed)."""
    if flag.type is not None:
        return flag.type
    return converter_of(DEFAULTS["paper"].get(flag.path))


def default_text(flag: Flag) -> str:
    """'(default 0.1 from preset paper; 0.5 from preset tiny)': the value that applies unless given."""
    if flag.path is None:
        return ""
    values = {name: tree.get(flag.path) for name, tree in DEFAULTS.items()}
    if not flag.path.startswith("model."):
        return f" (default {values['paper']!r})"
    shown = "; ".join(f"{value!r} from preset {name}" for name, value in values.items()
                      if name == "paper" or value != values["paper"])
    return f" (default {shown})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=argparse.SUPPRESS, help="JSON file of flag values (the flags' "
                        "underscore names); flags typed on the command line win; relative paths in it are taken "
                        "from its folder")
    upstream = parser.add_argument_group("the original's spellings of the settings above")
    for flag in FLAGS:
        if flag.accepted is not None:
            _add_flag(parser, flag, argparse.SUPPRESS)
        else:
            _add_flag(upstream if flag.path is None else parser, flag, flag.help + default_text(flag))
    parser.epilog = ("Also accepted, at their neutral values only, so that the original's command lines and config "
                     "files still work (docs/training.md, Flags of the original): "
                     + ", ".join(flag.option for flag in COMPAT) + ".")


def _add_flag(parser, flag: Flag, help_text: str) -> None:
    converter = converter_for(flag)
    kwargs: dict[str, Any] = dict(dest=flag.name, type=converter, default=argparse.SUPPRESS, help=help_text)
    is_list = flag.path is not None and isinstance(DEFAULTS["paper"].get(flag.path), list)
    nargs = flag.nargs or ("?" if converter is parse_bool else "*" if is_list else None)
    if nargs:
        kwargs["nargs"] = nargs
    if nargs == "?":
        kwargs["const"] = True if converter is parse_bool else "auto"
    if flag.choices:
        kwargs["choices"] = flag.choices
    parser.add_argument(flag.option, **kwargs)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The flag values of a ``--config`` file, converted and checked like typed flags. Relative paths in it are
    taken from the file's folder (so the file works from any current directory)."""
    path = Path(path)
    with as_argument_error():
        raw = read_json(path, "--config file")
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
            value = convert(flag, converter_for(flag), value)
        except argparse.ArgumentTypeError as err:
            raise ArgumentError(f"{path}: key '{key}' has value {value!r}: {err}") from None
        if flag.relative and value and not (name == "resume" and value == "auto") and not Path(value).is_absolute():
            value = os.path.normpath(path.parent.absolute() / value)
        values[name] = value
    return values


def resolve(command_line: dict[str, Any], config_file: dict[str, Any] | None = None, world_size: int = 1,
            model_config: AVLFormerConfig | None = None) -> TrainConfig:
    """Flags typed + ``--config`` values (the original's names) -> the complete, checked training config.
    ``model_config`` replaces the preset as the base, for callers that hand in a ready-made model."""
    given = {**(config_file or {}), **command_line}
    check_accepted(given)
    check_numbers(given)
    sections: dict[str, dict[str, Any]] = {name: {} for name in ("model", *SECTIONS)}
    for name, value in given.items():
        flag = BY_NAME[name]
        if flag.path is not None and not (flag.unset is not None and value == flag.unset):
            section, field = flag.path.split(".", 1)
            sections[section][field] = value
    model_values = sections.pop("model")
    config = TrainConfig(**{name: cls(**sections[name]) for name, cls in SECTIONS.items()})
    translate_upstream(given, config)
    config.model = model_from(config, model_values, model_config)
    check_model_flags(given, config.model)
    resolve_batch_sizes(config, world_size)
    check_numbers(upstream_values(config))
    with as_argument_error(ValueError):
        resolve_device(config.run.device, None)
    check_scst(config)
    check_feature_flags(command_line, config.data.features)
    config.run.output_dir = config.run.output_dir.replace(" ", "_")
    return config


def check_accepted(given: dict[str, Any]) -> None:
    for flag in COMPAT:
        if flag.name in given and flag.accepted != ANY and given[flag.name] not in flag.accepted:
            raise ArgumentError(f"{flag.option}={given[flag.name]!r} is not supported: {flag.help} "
                                f"(accepted value: {flag.accepted[0]!r})")


def translate_upstream(given: dict[str, Any], config: TrainConfig) -> None:
    """The original's precision, checkpointing and debug flags onto the tree; contradictory combinations are
    errors rather than a silent pick."""
    run, optim = config.run, config.optim
    method = given.get("mixed_precision_method")
    if "deepspeed" in (method, run.distributed_strategy):
        option = "--mixed-precision-method" if method == "deepspeed" else "--distributed-strategy"
        raise ArgumentError(f"{option} deepspeed: {NO_DEEPSPEED}")
    if method is not None:
        strategy = {"apex": "ddp", "fairscale": "fsdp"}[method]
        if given.get("distributed_strategy", strategy) != strategy:
            raise ArgumentError(f"--mixed-precision-method {method} contradicts --distributed-strategy "
                                f"{run.distributed_strategy}")
        run.distributed_strategy = strategy
    fairscale_fp16, level = given.get("fairscale_fp16", False), given.get("amp_opt_level", 0)
    if fairscale_fp16 and run.distributed_strategy != "fsdp":
        raise ArgumentError("--fairscale-fp16 needs --mixed-precision-method fairscale")
    if level not in (0, 1, 2, 3):
        raise ArgumentError(f"--amp-opt-level must be 0..3, got {level}")
    if level > 0 or fairscale_fp16:
        if given.get("precision", "fp16") != "fp16":
            raise ArgumentError(f"--precision {run.precision} contradicts the upstream fp16 flags")
        run.precision = "fp16"
    if given.get("use_checkpoint") and "video" not in run.activation_checkpointing:
        run.activation_checkpointing = [*run.activation_checkpointing, "video"]
    if given.get("debug"):
        optim.per_gpu_train_batch_size = optim.per_gpu_eval_batch_size = optim.num_train_epochs = 1
        run.logging_steps = 5
    if optim.backbone_coef_lr == 0:
        optim.freeze_backbone = True  # upstream: a zero backbone lr means a frozen backbone


def base_model_tree(preset: str, model_config_path: str, model_config: AVLFormerConfig | None = None) -> dict:
    """The model configuration before flags apply, as a dict: a given one, else the --model_config file, else the
    preset."""
    if model_config is not None:
        return model_config.to_dict()
    if not model_config_path:
        return PRESETS[preset]().to_dict()
    with as_argument_error():
        tree = read_json(model_config_path, "--model-config file")
    if not isinstance(tree, dict):
        raise ArgumentError(f"{model_config_path}: --model-config must hold one JSON object")
    try:  # a file may leave fields out: they take the configuration's defaults
        return AVLFormerConfig.from_dict(tree).to_dict()
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"{model_config_path}: not a valid model configuration ({err})") from None


def model_from(config: TrainConfig, values: dict[str, Any], model_config: AVLFormerConfig | None):
    """The AVLFormerConfig: the base tree, its parts replaced as --video-encoder/--audio-encoder/--decoder say,
    with the model flags' values set at their paths."""
    tree = base_model_tree(config.init.model_preset, config.init.model_config, model_config)
    choose_parts(tree, config.init)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            flag = next(flag for flag in FLAGS if flag.path == f"model.{path}")
            raise ArgumentError(f"{flag.option}: the model configuration has no field '{path}'")
        node[leaf] = value
    if "img_feature_dim" in values:  # the visual width appears again in the parts that carry it
        for role, key in (("text", "img_feature_dim"), ("audio", "out_dim")):
            if isinstance(tree.get(role), dict) and key in tree[role]:
                tree[role][key] = values["img_feature_dim"]
    for encoder in config.run.activation_checkpointing:
        if encoder == "text":  # the decoder's switch lives on the module (setup.build_model)
            continue
        if "use_checkpoint" not in tree.get(encoder, {}):
            raise ArgumentError(f"--activation-checkpointing {encoder}: this {encoder} encoder's configuration has "
                                "no use_checkpoint switch")
        tree[encoder]["use_checkpoint"] = True
    try:
        return AVLFormerConfig.from_dict(tree)
    except (TypeError, ValueError) as err:
        source = config.init.model_config or f"--model-preset {config.init.model_preset}"
        raise ArgumentError(f"the model configuration ({source} + flags) is invalid: {err}") from None


def check_model_flags(given: dict[str, Any], model: AVLFormerConfig) -> None:
    """The original's derived flags, when given, must agree with the model (a disagreement is an error, not a
    silent replacement)."""
    for name, value in derived_values(model).items():
        if given.get(name, value) != value:
            raise ArgumentError(f"{flag_option(name)} {given[name]} contradicts this model's {value}: "
                                f"{BY_NAME[name].help}")


def resolve_batch_sizes(config: TrainConfig, world_size: int) -> None:
    """--effective_batch_size = per-process batch x processes x accumulation steps."""
    optim = config.optim
    accumulation = optim.gradient_accumulation_steps
    if accumulation < 1:
        raise ArgumentError(f"--gradient-accumulation-steps must be >= 1, got {accumulation}")
    if optim.effective_batch_size > 0:
        per_step = world_size * accumulation
        if optim.effective_batch_size % per_step:
            raise ArgumentError(f"--effective-batch-size {optim.effective_batch_size} is not divisible by "
                                f"processes x accumulation steps = {world_size} x {accumulation}")
        optim.per_gpu_train_batch_size = optim.effective_batch_size // per_step
    elif optim.effective_batch_size == 0:
        raise ArgumentError("--effective-batch-size must be > 0 (or -1: per-process batch x processes x "
                            "accumulation steps)")
    optim.effective_batch_size = optim.per_gpu_train_batch_size * world_size * accumulation
    # Upstream raised the eval batch to at least the train batch.
    optim.per_gpu_eval_batch_size = max(optim.per_gpu_eval_batch_size, optim.per_gpu_train_batch_size)


# (flags, rule, test): the ranges of numbers, checked on the values given (so a model flag's error names the flag,
# before the model configuration is built) and again on the resolved config
RANGES = (
    (("num_train_epochs", "logging_steps", "max_num_frames", "img_res", "num_beams", "max_gen_length",
      "max_seq_length", "per_gpu_train_batch_size", "per_gpu_eval_batch_size", "sc_train_sample_n"), ">= 1",
     lambda v: v >= 1),
    (("num_workers", "max_masked_tokens", "backbone_coef_lr", "weight_decay", "min_lr", "loss_sparse_w", "top_k",
      "scst_xe_weight", "max_steps"), ">= 0", lambda v: v >= 0),
    (("limited_samples",), ">= 1 (or -1: all)", lambda v: v == -1 or v >= 1),
    (("seed",), "in [0, 2**32)", lambda v: 0 <= v < 2**32),
    (("mask_prob", "lambda_"), "in [0, 1]", lambda v: 0 <= v <= 1),
    (("warmup_ratio", "drop_out"), "in [0, 1)", lambda v: 0 <= v < 1),
    (("learning_rate", "adam_epsilon", "temperature"), "> 0", lambda v: v > 0),
    (("top_p",), "in (0, 1]", lambda v: 0 < v <= 1),
)


def check_numbers(values: dict[str, Any]) -> None:
    """The range of every number among ``values`` (flag name -> value)."""
    for names, rule, ok in RANGES:
        for name in names:
            if name in values and not ok(values[name]):
                raise ArgumentError(f"{flag_option(name)} must be {rule}, got {values[name]!r}")


SCST_ONLY = ("sc_train_sample_n", "sc_baseline_type", "temperature", "top_k", "top_p", "scst_xe_weight")


def check_scst(config: TrainConfig) -> None:
    """The sampling and baseline flags act only with --scst: given without it they would be silently ignored."""
    scst = config.scst
    if not scst.enabled:
        for name in SCST_ONLY:
            field = BY_NAME[name].path.split(".")[1]
            if getattr(scst, field) != getattr(ScstSettings, field):
                raise ArgumentError(f"{flag_option(name)}={config.get(BY_NAME[name].path)!r} applies only to "
                                    "self-critical training: add --scst (validation always decodes "
                                    "deterministically)")
        return
    if scst.baseline_type == "sample" and scst.sample_n < 2:
        raise ArgumentError("--sc-baseline-type sample (the mean reward of a video's other samples) needs "
                            f"--sc-train-sample-n >= 2, got {scst.sample_n}; or use --sc-baseline-type greedy")
    if config.run.distributed_strategy != "ddp":
        raise ArgumentError(f"--scst cannot be combined with --distributed-strategy {config.run.distributed_strategy}"
                            ": sampling calls the model's parts directly, which FSDP shards; use ddp (the default)")


def resolve_args(namespace: argparse.Namespace, world_size: int = 1,
                 model_config: AVLFormerConfig | None = None) -> TrainConfig:
    """A parsed namespace (only the flags given, plus ``config``) -> the resolved ``TrainConfig``."""
    command_line = {k: v for k, v in vars(namespace).items() if not k.startswith("_") and k != "config"}
    config_path = getattr(namespace, "config", None)
    from_file = load_config_file(config_path) if config_path else {}
    return resolve(command_line, from_file, world_size, model_config)


def parse_train_args(argv: list[str], world_size: int = 1,
                     model_config: AVLFormerConfig | None = None) -> TrainConfig:
    """For programmatic use (demo, tests): argv in either spelling -> the resolved ``TrainConfig``."""
    parser = argparse.ArgumentParser(prog="avlformer train")
    add_arguments(parser)
    return resolve_args(parser.parse_args(normalize_flag_spelling(list(argv))), world_size, model_config)
