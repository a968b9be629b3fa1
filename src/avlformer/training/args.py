"""The `avlformer train` flag set: upstream's flags (FACTS §4.5) with their meanings, our additions, and the
merging of a JSON ``--config`` file with the command line.

Precedence, lowest to highest: flag defaults < model preset (for model-shaping flags) < ``--config`` file <
flags typed on the command line. To know what was typed, every flag is declared with ``argparse.SUPPRESS`` as its
default, so the parsed namespace holds only explicit flags; defaults are filled in here afterwards.

Upstream flags that did nothing (or belonged to code that never existed, like CBS or SCST) are accepted only at
their neutral value; any other value is an error naming the flag and why, so no option is silently ignored.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class ArgumentError(ValueError):
    """A flag or config value that cannot be honoured; the message names the flag (and file) and the problem."""


def str_to_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in {"1", "true", "yes", "y", "t", "on"}:
        return True
    if lowered in {"0", "false", "no", "n", "f", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


@dataclass(frozen=True)
class Flag:
    name: str            # upstream (underscore) name = attribute name = config key = args.json key
    type: Callable
    default: Any
    help: str
    nargs: str | None = None
    choices: tuple | None = None


B, I, F, S = str_to_bool, int, float, str

# Flags that do what they say. Grouped as in upstream's parser (FACTS §4.5); ours are marked "(ours)".
ACTIVE_FLAGS: tuple[Flag, ...] = (
    # data
    Flag("data_dir", S, "datasets", "root that relative yaml paths are joined to"),
    Flag("train_yaml", S, "metadata/train_32frames.yaml", "training metadata yaml (relative to --data_dir)"),
    Flag("val_yaml", S, "metadata/val_32frames.yaml", "validation metadata yaml (relative to --data_dir)"),
    Flag("output_dir", S, "output/", "where checkpoints and log/ go (spaces become '_', as upstream)"),
    Flag("model_name_or_path", S, "", "folder with the BERT vocab.txt (default: the copy shipped with the package)"),
    Flag("tokenizer_name", S, "", "folder with vocab.txt; overrides --model_name_or_path for the tokenizer"),
    Flag("do_lower_case", B, True, "lower-case captions (bert-base-uncased needs true)", "?"),
    Flag("on_memory", B, True, "keep captions in memory (they always are; false is rejected)", "?"),
    Flag("max_seq_length", I, 300, "text positions in a training example"),
    Flag("max_seq_a_length", I, 300, "caption positions; must equal --max_seq_length (no OD labels)"),
    Flag("max_img_seq_length", I, 50, "visual tokens; derived from frames, resolution and PaSST (checked, not set)"),
    Flag("mask_prob", F, 0.25, "fraction of caption tokens chosen for MLM"),
    Flag("max_masked_tokens", I, 75, "cap on MLM positions per caption"),
    Flag("limited_samples", I, -1, "train on the first N training samples only (-1: all)"),
    Flag("num_workers", I, 4, "DataLoader worker processes per rank"),
    # model
    Flag("model_preset", S, "paper", "(ours) base model configuration before flags apply", choices=("paper", "tiny")),
    Flag("model_config", S, "", "(ours) AVLFormerConfig JSON file; replaces --model_preset"),
    Flag("max_num_frames", I, 32, "frames per clip"),
    Flag("img_res", I, 224, "frame side in pixels"),
    Flag("img_feature_dim", I, 512, "width of the visual tokens fed to the text transformer"),
    Flag("num_hidden_layers", I, -1, "text transformer layers (override when > 0)"),
    Flag("hidden_size", I, -1, "text transformer width (override when > 0)"),
    Flag("num_attention_heads", I, -1, "text transformer heads (override when > 0)"),
    Flag("intermediate_size", I, -1, "text transformer MLP width (override when > 0)"),
    Flag("drop_out", F, 0.1, "text transformer hidden dropout"),
    Flag("learn_mask_enabled", B, False, "learned sparse visual attention mask", "?"),
    Flag("sparse_mask_soft2hard", B, False, "binarise the learned mask at 0.5 (no gradient)", "?"),
    Flag("loss_sparse_w", F, 0.0, "weight of the mask sparsity loss"),
    Flag("lambda_", F, 0.5, "loss = lambda_*LM + (1-lambda_)*MLM (upstream meaning; --lambda_ / --lambda)"),
    Flag("attn_mask_type", S, "seq2seq", "learn_vid_att = learned AV mask, seq2seq = plain (AV tokens attend to "
         "all AV tokens); follows --learn_mask_enabled, a contradicting value is an error",
         choices=("seq2seq", "learn_vid_att")),
    Flag("use_checkpoint", B, False, "activation checkpointing in the video encoder (upstream flag)", "?"),
    Flag("activation_checkpointing", S, [], "(ours) encoders to checkpoint: video audio text", "*",
         choices=("video", "audio", "text")),
    Flag("freeze_backbone", B, False, "freeze Video Swin (forced when --backbone_coef_lr is 0)", "?"),
    Flag("freeze_passt", B, False, "freeze PaSST", "?"),
    Flag("freeze_embedding", B, False, "freeze the text word embeddings", "?"),
    Flag("swin_checkpoint", S, "", "(ours) official Video Swin Kinetics .pth to initialise the video encoder "
         "(upstream hard-coded models/video_swin_transformer/swin_base_patch244_window877_kinetics600_22k.pth)"),
    Flag("passt_checkpoint", S, "", "(ours) official PaSST .pt to initialise the audio encoder "
         "(upstream hard-coded src/modeling/passt/passt-s-f128-p16-s10-ap.476-swa.pt)"),
    Flag("pretrained_checkpoint", S, "", "initialise all weights from a checkpoint (ours, upstream folder or model.bin)"),
    Flag("max_gen_length", I, 20, "caption length limit when decoding for validation"),
    Flag("num_beams", I, 1, "beams when decoding for validation (1 = greedy)"),
    Flag("length_penalty", F, 1.0, "beam-search length penalty"),
    # optimisation
    Flag("per_gpu_train_batch_size", I, 64, "training batch per process"),
    Flag("per_gpu_eval_batch_size", I, 64, "validation batch per process"),
    Flag("effective_batch_size", I, -1, "if > 0: global batch per optimizer step; sets the per-process batch"),
    Flag("gradient_accumulation_steps", I, 1, "micro-batches per optimizer step"),
    Flag("learning_rate", F, 3e-5, "peak learning rate (non-backbone groups)"),
    Flag("backbone_coef_lr", F, 0.001, "Video Swin lr = learning_rate * this"),
    Flag("weight_decay", F, 0.05, "AdamW decoupled weight decay (applied; upstream hard-coded 0.2)"),
    Flag("adam_epsilon", F, 1e-8, "AdamW epsilon"),
    Flag("max_grad_norm", F, 1.0, "global gradient-norm clip (<= 0 disables)"),
    Flag("warmup_ratio", F, 0.1, "fraction of optimizer steps spent warming up"),
    Flag("min_lr", F, 1e-8, "(ours) floor of the warmup-linear schedule (upstream hard-coded 1e-8)"),
    Flag("scheduler", S, "warmup_linear", "lr schedule", choices=("warmup_linear", "step")),
    Flag("num_train_epochs", I, 20, "epochs"),
    Flag("seed", I, 88, "seed of python, numpy and torch RNGs and of the data order"),
    # running
    Flag("logging_steps", I, 20, "log every N optimizer steps"),
    Flag("save_steps", I, 2000, "checkpoint (and validate) every N optimizer steps; <= 0: once per epoch"),
    Flag("evaluate_during_training", B, False, "validate (greedy decode + caption metrics) at each checkpoint", "?"),
    Flag("resume", S, "", "(ours) 'auto' (or a bare --resume) = latest checkpoint in --output_dir, or a "
         "checkpoint folder", "?"),
    Flag("precision", S, "fp32", "(ours) native AMP precision", choices=("fp32", "bf16", "fp16")),
    Flag("distributed_strategy", S, "ddp", "(ours) how processes share the model", choices=("ddp", "fsdp", "deepspeed")),
    Flag("mixed_precision_method", S, "apex", "upstream spelling of the strategy: apex = ddp, fairscale = fsdp, "
         "deepspeed = deepspeed", choices=("apex", "deepspeed", "fairscale")),
    Flag("amp_opt_level", I, 0, "upstream apex level: 0 = fp32, 1/2/3 = fp16"),
    Flag("deepspeed_fp16", B, False, "fp16 with --mixed_precision_method deepspeed", "?"),
    Flag("fairscale_fp16", B, False, "fp16 with --mixed_precision_method fairscale", "?"),
    Flag("zero_opt_stage", I, -1, "DeepSpeed ZeRO stage (-1/0: off); ignored unless DeepSpeed, as upstream"),
    Flag("device", S, "cuda", "cuda (one GPU per process, falls back to cpu when none) or cpu"),
    Flag("local_rank", I, 0, "legacy torch.distributed.launch argument; LOCAL_RANK from the environment wins"),
    Flag("debug", B, False, "upstream debug run: batch 1, 1 epoch, log every 5 steps", "?"),
    Flag("do_train", B, True, "train (avlformer train always does; false is rejected)", "?"),
)

# name -> (neutral values, why another value cannot be honoured). Parser default listed first.
DEAD_FLAGS: dict[str, tuple[tuple, str]] = {
    "config_name": (("",), "the model configuration comes from --model_preset/--model_config"),
    "load_partial_weights": ((False,), "use --pretrained_checkpoint"),
    "add_od_labels": ((False,), "object-detection tags are not part of FAVD"),
    "use_asr": ((False,), "ASR text is not part of FAVD"),
    "unique_labels_on": ((False,), "object-detection tags are not part of FAVD"),
    "no_sort_by_conf": ((False,), "object-detection tags are not part of FAVD"),
    "od_label_conf": ((0.0,), "object-detection tags are not part of FAVD"),
    "text_mask_type": (("random",), "only random MLM masking exists (upstream's other modes were never wired)"),
    "tag_to_mask": ((["noun", "verb"],), "POS-tag masking is not implemented"),
    "mask_tag_prob": ((0.8, -1.0), "POS-tag masking is not implemented"),
    "tagger_model_path": (("models/flair/en-pos-ontonotes-fast-v0.5.pt",), "POS-tag masking is not implemented"),
    "random_mask_prob": ((0.0,), "upstream never used it"),
    "mask_img_feat": ((False,), "upstream never used it"),
    "max_masked_img_tokens": ((10,), "upstream never used it"),
    "tie_weights": ((False,), "the LM head is untied in the released model"),
    "label_smoothing": ((0.0,), "label smoothing is not implemented"),
    "drop_worst_ratio": ((0.0,), "drop-worst loss is not implemented"),
    "drop_worst_after": ((0,), "drop-worst loss is not implemented"),
    "output_hidden_states": ((False,), "not used by training"),
    "num_return_sequences": ((1,), "validation keeps one caption per video"),
    "num_keep_best": ((1,), "validation keeps one caption per video"),
    "temperature": ((1.0,), "validation decodes deterministically (no sampling)"),
    "top_k": ((0,), "validation decodes deterministically (no sampling)"),
    "top_p": ((1.0,), "validation decodes deterministically (no sampling)"),
    "repetition_penalty": ((1.0,), "repetition penalty is not implemented"),
    "use_cbs": ((False,), "constrained beam search did not exist upstream (module missing)"),
    "use_hypo": ((False,), "constrained beam search did not exist upstream (module missing)"),
    "decoding_constraint": ((False,), "constrained beam search did not exist upstream (module missing)"),
    "remove_bad_endings": ((False,), "constrained beam search did not exist upstream (module missing)"),
    "min_constraints_to_satisfy": ((2,), "constrained beam search did not exist upstream (module missing)"),
    "scst": ((False,), "self-critical training was never implemented upstream"),
    "sc_train_sample_n": ((5,), "self-critical training was never implemented upstream"),
    "sc_baseline_type": (("greedy",), "self-critical training was never implemented upstream"),
    "cider_cached_tokens": (("coco_caption/gt/coco-train-words.p",), "self-critical training was never implemented"),
    "patch_size": ((32,), "the token stride is fixed by Video Swin's patch (2,4,4) and 3 merges = 32 pixels"),
    "grid_feat": ((True,), "visual tokens are always the feature grid"),
    "kinetics": (("400", "600"), "the Kinetics variant is the file given to --swin-checkpoint"),
    "pretrained_2d": ((False,), "2D-ImageNet Swin initialisation is not supported"),
    "vidswin_size": (("base",), "the backbone size comes from --model_preset/--model_config"),
    "att_mode": (("default",), "only the default text/visual attention layout is implemented"),
    "reload_pretrained_swin": ((False,), "pass --swin-checkpoint (it is applied before --pretrained-checkpoint)"),
    "transfer_method": ((0, -1), "only the full weight transfer (0) is implemented"),
    "att_mask_expansion": ((0, -1), "learned masks must have the target shape; expansion is not implemented"),
    "restore_ratio": ((-1.0, 0.05), "upstream's restore.pt mechanism is replaced by --resume"),
    "debug_speed": ((False,), "use benchmarks/ for speed measurements"),
    "do_test": ((False,), "use `avlformer infer` + `avlformer evaluate` on the test split"),
    "do_eval": ((False,), "use `avlformer infer` + `avlformer evaluate`"),
    "eval_model_dir": (("",), "use `avlformer infer --eval_model_dir`"),
    "test_yaml": ((["coco_caption/test.yaml"],), "use `avlformer infer` on the test split"),
    "resume_checkpoint": (("None",), "use --resume (training) or `avlformer infer --eval_model_dir`"),
    "test_video_fname": (("None",), "use `avlformer infer --test_video_fname`"),
    "test_audio_fname": (("None",), "use `avlformer infer --test_audio_fname`"),
    "use_clip_model": ((True, False), "upstream's config key was never read"),
}

DEAD_FLAG_TYPES: dict[str, tuple[Callable, str | None]] = {
    "tag_to_mask": (S, "+"), "test_yaml": (S, "+"), "kinetics": (S, None), "patch_size": (I, None),
    "od_label_conf": (F, None), "mask_tag_prob": (F, None), "random_mask_prob": (F, None),
    "label_smoothing": (F, None), "drop_worst_ratio": (F, None), "temperature": (F, None), "top_p": (F, None),
    "repetition_penalty": (F, None), "restore_ratio": (F, None), "max_masked_img_tokens": (I, None),
    "drop_worst_after": (I, None), "num_return_sequences": (I, None), "num_keep_best": (I, None), "top_k": (I, None),
    "min_constraints_to_satisfy": (I, None), "sc_train_sample_n": (I, None), "transfer_method": (I, None),
    "att_mask_expansion": (I, None),
}

ACTIVE_BY_NAME = {flag.name: flag for flag in ACTIVE_FLAGS}

# Flags that shape the model: when not given (CLI or config), the preset's value is used instead of the default.
MODEL_FIELD_FLAGS = ("max_num_frames", "img_res", "learn_mask_enabled", "lambda_", "loss_sparse_w",
                     "max_seq_length", "max_gen_length", "num_beams", "length_penalty", "sparse_mask_soft2hard",
                     "img_feature_dim", "drop_out")


def flag_option(name: str) -> str:
    """Command-line spelling: hyphens; a trailing underscore (``lambda_``) is dropped, as the CLI normaliser does."""
    return "--" + name.replace("_", "-").rstrip("-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=argparse.SUPPRESS, help="JSON file of flag values (upstream keys); "
                        "flags typed on the command line win")
    for flag in ACTIVE_FLAGS:
        _add_flag(parser, flag.name, flag.type, flag.nargs, f"{flag.help} (default: {flag.default!r})", flag.choices)
    dead = parser.add_argument_group("upstream flags kept for compatibility (only their neutral value is accepted)")
    for name, (neutral, reason) in DEAD_FLAGS.items():
        flag_type, nargs = DEAD_FLAG_TYPES.get(name, (B if isinstance(neutral[0], bool) else S, None))
        if flag_type is B:
            nargs = "?"
        _add_flag(dead, name, flag_type, nargs, f"{reason} (accepted: {neutral[0]!r})", None)


def _add_flag(parser, name, flag_type, nargs, help_text, choices) -> None:
    kwargs: dict[str, Any] = dict(dest=name, type=flag_type, default=argparse.SUPPRESS, help=help_text)
    if nargs:
        kwargs["nargs"] = nargs
    if nargs == "?":
        kwargs["const"] = True if flag_type is B else "auto"
    if choices:
        kwargs["choices"] = choices
    parser.add_argument(flag_option(name), **kwargs)


def config_key(key: str) -> str:
    """Config files may use either spelling; ``lambda`` and ``lambda_`` are the same key."""
    key = key.replace("-", "_")
    return "lambda_" if key in ("lambda", "lambda_") else key


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArgumentError(f"{path}: --config file not found") from None
    except json.JSONDecodeError as err:
        raise ArgumentError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ArgumentError(f"{path}: a --config file must hold one JSON object of flag values")
    values = {}
    for key, value in raw.items():
        name = config_key(key)
        if name == "config":
            raise ArgumentError(f"{path}: a config file cannot name another config file ('{key}')")
        if name not in ACTIVE_BY_NAME and name not in DEAD_FLAGS:
            raise ArgumentError(f"{path}: unknown key '{key}' (see `avlformer train --help` for the flags)")
        values[name] = _coerce(name, value, path)
    return values


def _coerce(name: str, value: Any, source: Path) -> Any:
    flag = ACTIVE_BY_NAME.get(name)
    flag_type, nargs = (flag.type, flag.nargs) if flag else DEAD_FLAG_TYPES.get(name, (None, None))
    if flag_type is None:
        flag_type = B if isinstance(DEAD_FLAGS[name][0][0], bool) else S
    try:
        if nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            return [flag_type(item) for item in items]
        return flag_type(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise ArgumentError(f"{source}: key '{name}' has value {value!r}: {err}") from None


def defaults() -> dict[str, Any]:
    values = {flag.name: flag.default for flag in ACTIVE_FLAGS}
    values.update({name: neutral[0] for name, (neutral, _) in DEAD_FLAGS.items()})
    return values


def merge_sources(namespace: argparse.Namespace) -> tuple[dict[str, Any], set[str]]:
    """Defaults < config file < command line. Returns the merged values and the names set explicitly."""
    explicit_cli = {k: v for k, v in vars(namespace).items() if not k.startswith("_") and k != "config"}
    from_file = load_config_file(namespace.config) if getattr(namespace, "config", None) else {}
    values = defaults()
    values.update(from_file)
    values.update(explicit_cli)
    values["config"] = getattr(namespace, "config", None)
    return values, set(from_file) | set(explicit_cli)


def reject_dead_flags(values: dict[str, Any]) -> None:
    for name, (neutral, reason) in DEAD_FLAGS.items():
        if values[name] not in neutral:
            raise ArgumentError(f"{flag_option(name)}={values[name]!r} is not supported: {reason} "
                                f"(accepted value: {neutral[0]!r})")
    if not values["on_memory"]:
        raise ArgumentError("--on-memory false is not supported: captions are always held in memory")
    if not values["do_train"]:
        raise ArgumentError("--do-train false: `avlformer train` always trains; use `avlformer infer` to decode")
    if not values["do_lower_case"]:
        raise ArgumentError("--do-lower-case false is not supported: the bert-base-uncased vocab is lower-case")
    if values["max_seq_a_length"] != values["max_seq_length"]:
        raise ArgumentError(f"--max-seq-a-length ({values['max_seq_a_length']}) must equal --max-seq-length "
                            f"({values['max_seq_length']}): there is no second text segment")


def resolve_precision_and_strategy(values: dict[str, Any], explicit: set[str]) -> None:
    """Fold upstream's --mixed_precision_method / --amp_opt_level / --*_fp16 into --distributed_strategy and
    --precision; contradictory combinations are errors rather than a silent pick."""
    method_strategy = {"apex": "ddp", "fairscale": "fsdp", "deepspeed": "deepspeed"}[values["mixed_precision_method"]]
    if "mixed_precision_method" in explicit:
        if "distributed_strategy" in explicit and values["distributed_strategy"] != method_strategy:
            raise ArgumentError(f"--mixed-precision-method {values['mixed_precision_method']} contradicts "
                                f"--distributed-strategy {values['distributed_strategy']}")
        values["distributed_strategy"] = method_strategy
    wants_fp16 = values["amp_opt_level"] > 0 or values["deepspeed_fp16"] or values["fairscale_fp16"]
    if values["deepspeed_fp16"] and values["distributed_strategy"] != "deepspeed":
        raise ArgumentError("--deepspeed-fp16 needs --mixed-precision-method deepspeed")
    if values["fairscale_fp16"] and values["distributed_strategy"] != "fsdp":
        raise ArgumentError("--fairscale-fp16 needs --mixed-precision-method fairscale")
    if values["amp_opt_level"] not in (0, 1, 2, 3):
        raise ArgumentError(f"--amp-opt-level must be 0..3, got {values['amp_opt_level']}")
    if wants_fp16:
        if "precision" in explicit and values["precision"] != "fp16":
            raise ArgumentError(f"--precision {values['precision']} contradicts the upstream fp16 flags")
        values["precision"] = "fp16"
    if values["distributed_strategy"] != "deepspeed":
        values["zero_opt_stage"] = -1  # upstream's basic_check_arguments did the same


def resolve_batch_sizes(values: dict[str, Any], world_size: int) -> None:
    """--effective_batch_size = per-process batch x processes x accumulation steps (DeepSpeed's train_batch_size)."""
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
    else:
        values["effective_batch_size"] = values["per_gpu_train_batch_size"] * world_size * accumulation
    if values["per_gpu_train_batch_size"] < 1:
        raise ArgumentError("--per-gpu-train-batch-size must be >= 1")
    # Upstream raised the eval batch to at least the train batch.
    values["per_gpu_eval_batch_size"] = max(values["per_gpu_eval_batch_size"], values["per_gpu_train_batch_size"])


def resolve_freezing(values: dict[str, Any]) -> None:
    if values["backbone_coef_lr"] == 0:
        values["freeze_backbone"] = True  # upstream: a zero backbone lr means a frozen backbone
    if values["use_checkpoint"] and "video" not in values["activation_checkpointing"]:
        values["activation_checkpointing"] = list(values["activation_checkpointing"]) + ["video"]


def check_numbers(values: dict[str, Any]) -> None:
    positive = ("num_train_epochs", "logging_steps", "max_num_frames", "img_res", "num_beams", "max_gen_length")
    for name in positive:
        if values[name] < 1:
            raise ArgumentError(f"{flag_option(name)} must be >= 1, got {values[name]}")
    if not 0 <= values["warmup_ratio"] < 1:
        raise ArgumentError(f"--warmup-ratio must be in [0, 1), got {values['warmup_ratio']}")
    if not 0 <= values["lambda_"] <= 1:
        raise ArgumentError(f"--lambda must be in [0, 1], got {values['lambda_']}")
    if values["learning_rate"] <= 0:
        raise ArgumentError(f"--learning-rate must be > 0, got {values['learning_rate']}")


def resolve_args(namespace: argparse.Namespace, world_size: int = 1) -> tuple[argparse.Namespace, set[str]]:
    """Parsed (explicit-only) namespace -> complete, checked namespace with upstream attribute names.
    Also returns the names given explicitly, which decide whether a preset's model value is kept."""
    values, explicit = merge_sources(namespace)
    reject_dead_flags(values)
    resolve_precision_and_strategy(values, explicit)
    resolve_batch_sizes(values, world_size)
    resolve_freezing(values)
    check_numbers(values)
    values["output_dir"] = values["output_dir"].replace(" ", "_")
    return argparse.Namespace(**values), explicit


def parse_train_args(argv: list[str], world_size: int = 1) -> tuple[argparse.Namespace, set[str]]:
    """For programmatic use (demo, tests): argv in either spelling -> resolved namespace + explicit names."""
    from avlformer.flags import normalize_flag_spelling

    parser = argparse.ArgumentParser(prog="avlformer train")
    add_arguments(parser)
    return resolve_args(parser.parse_args(normalize_flag_spelling(list(argv))), world_size)
