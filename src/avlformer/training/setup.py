"""What a training run sets up before its first step: seeds and (optionally) deterministic kernels, the log,
the tokenizer folder, the datasets and the preprocessing recipe they were prepared with; and the model: what it is
and costs (said before it is built), weight initialisation (--model_name_or_path BERT, --swin/--passt_checkpoint,
--pretrained_checkpoint) and freezing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avlformer.atomic import write_text_atomic
from avlformer.data.dataset import CaptionDataset, DataConfig
from avlformer.data.recipe import recipe_for_yaml
from avlformer.device import one_cpu_thread
from avlformer.modeling.avlformer import AVLFormer, describe_model
from avlformer.modeling.checkpoint import load_model
from avlformer.modeling.meta_device import build_on_meta
from avlformer.modeling.text_transformer import HF_BERT_WEIGHTS
from avlformer.training.flag_table import ArgumentError, upstream_values

log = logging.getLogger("avlformer.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device):
    """--deterministic for the duration of a run (docs/training.md, Resuming); the previous settings are restored
    afterwards, so a caller's process is left as it was."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # cuBLAS reads this when it creates its handle (the first matmul), which comes after this point.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with one_cpu_thread() if device.type == "cpu" else contextlib.nullcontext():
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def setup_logging(output_dir: Path, is_main: bool) -> None:
    """Rank 0 logs to the console and output_dir/log/log.txt; other ranks only warnings (upstream silenced them)."""
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    for handler in log.handlers:
        handler.close()
    log.handlers.clear()
    log.propagate = False
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(console)
    if is_main:
        (output_dir / "log").mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / "log" / "log.txt")
        file_handler.setFormatter(console.formatter)
        log.addHandler(file_handler)


def write_args_json(config, output_dir: Path, extra: dict) -> None:
    """log/args.json as upstream wrote it: every setting under its flag name, and the derived run sizes."""
    values = {**upstream_values(config), **extra}
    text = json.dumps(values, indent=4, sort_keys=True, default=str)
    write_text_atomic(output_dir / "log" / "args.json", text)


def vocab_dir_for(config) -> str | None:
    """The decoder's own tokenizer folder when it has one (a causal LM's), else --tokenizer_name, else
    --model_name_or_path when it holds a vocab.txt, else the shipped copy (None)."""
    own = getattr(getattr(config.model, "text", None), "path", "")
    if own:
        return own
    for candidate in (config.init.tokenizer_name, config.init.model_name_or_path):
        if not candidate:
            continue
        if (Path(candidate) / "vocab.txt").is_file():
            return candidate
        if Path(candidate.rstrip("/")).name == "bert-base-uncased":
            log.info("%s not found; using the bert-base-uncased vocab shipped with the package", candidate)
            return None
        raise ArgumentError(f"{candidate}: no vocab.txt (from --tokenizer-name / --model-name-or-path)")
    return None


def check_tokenizer_fits(config, tokenizer, vocab_dir: str | None) -> None:
    """A BERT decoder's embedding and LM head need a row for every id the caption tokenizer gives."""
    rows = getattr(config.model.text, "vocab_size", None)
    if rows is not None and len(tokenizer) > rows:
        raise ArgumentError(f"{vocab_dir or 'the shipped vocabulary'}: {len(tokenizer)} tokens, more than the "
                            f"decoder's vocab_size {rows} (the model config's text.vocab_size)")


def resolve_yaml(data_dir: str, yaml_path: str) -> Path:
    """Upstream: a yaml path that does not exist is joined with --data_dir."""
    path = Path(yaml_path)
    return path if path.is_file() else Path(data_dir) / yaml_path


def training_recipe(config):
    """The preprocessing recipe of the training data (recorded by ``prepare`` beside its yaml); it travels into
    every checkpoint so that inference builds the inputs the model learned from."""
    return recipe_for_yaml(resolve_yaml(config.data.data_dir, config.data.train_yaml))


def check_validation_recipe(config, train_recipe, val_recipe) -> None:
    """Validation data prepared another way than the training data would score the model on inputs it never saw
    (and the numbers would not say so): an error, naming what differs."""
    val_yaml = resolve_yaml(config.data.data_dir, config.data.val_yaml)
    if val_recipe != train_recipe:
        differences = val_recipe.differences(train_recipe, "training data")
        raise ArgumentError(f"{val_yaml}: the validation data was prepared with another recipe than the training "
                            f"data ({differences}); prepare both splits with the same `avlformer prepare` settings")


def data_config_for(config):
    """The loaders' DataConfig: frame count, image size, text length, audio rate and length from the model
    configuration (their one source), MLM masking from the data settings."""
    model = config.model
    return DataConfig(num_frames=model.num_frames, image_size=model.image_size, sample_rate=model.audio.sample_rate,
                      clip_seconds=model.audio.clip_seconds, max_seq_length=model.max_seq_length,
                      mask_prob=config.data.mask_prob, max_masked_tokens=config.data.max_masked_tokens)


def build_val_dataset(config, tokenizer, data_config):
    """The raw validation split, or None when training does not validate."""
    if not config.run.evaluate_during_training:
        return None
    return CaptionDataset(resolve_yaml(config.data.data_dir, config.data.val_yaml), data_config, False, tokenizer)


def build_datasets(config, tokenizer):
    data_config = data_config_for(config)
    train_set = CaptionDataset(resolve_yaml(config.data.data_dir, config.data.train_yaml), data_config, True,
                               tokenizer)
    return train_set, build_val_dataset(config, tokenizer, data_config)


def summary_writer(log_dir: Path):
    """TensorBoard's writer; TensorBoard is the ``[train]`` extra, so its absence is a one-line error found
    before any data is read or model built (``train`` calls this with ``log_dir=None`` first, as a check)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ArgumentError("avlformer train needs TensorBoard: pip install 'avlformer[train]'") from None
    return None if log_dir is None else SummaryWriter(str(log_dir))


# Above this many parameters, training on the CPU needs tens of GB (weights, AdamW state and activations).
LARGE_FOR_CPU = 50_000_000


def check_given_model(config, model: nn.Module) -> None:
    """A model handed in to ``train`` must be the model the flags describe (a flag that cannot take effect on
    it is an error, not ignored)."""
    given = getattr(model, "config", None)
    if given is None or given == config.model:
        return
    ours, theirs = flat(config.model.to_dict()), flat(given.to_dict())
    differences = [f"{k}: model {theirs.get(k)!r}, flags {ours.get(k)!r}" for k in sorted(set(ours) | set(theirs))
                   if ours.get(k) != theirs.get(k)]
    raise ArgumentError("the flags describe another model than the one given (" + "; ".join(differences[:4])
                        + "); pass the model's configuration to parse_train_args(..., model_config=...) and "
                        "leave out model-shaping flags that disagree with it")


def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def describe(config, device: torch.device) -> tuple[str, bool]:
    """(one line saying which model is built, its main dimensions and size; whether that size is out of reach
    on this device), for the log before anything is built."""
    source = config.init.model_config or f"the {config.init.model_preset} preset (--model-preset)"
    params = sum(p.numel() for p in build_on_meta(lambda: AVLFormer(config.model)).parameters())
    line = f"building the model from {source}: {describe_model(config.model, params)}"
    too_large = device.type == "cpu" and params > LARGE_FOR_CPU
    if too_large:
        line += ("; training a model this size on the CPU needs tens of GB of memory (weights, AdamW state and "
                 "activations; --model-preset tiny or --model-config FILE gives a small one)")
    return line, too_large


def load_pretrained(model: nn.Module, path: str) -> None:
    """Every tensor of a checkpoint (ours, an upstream folder or a released model.bin) whose name and shape match;
    missing or mismatched names are reported, not silently skipped."""
    source = load_model(path, "cpu")[0].state_dict()
    target = model.state_dict()
    mismatched = [k for k, v in source.items() if k in target and target[k].shape != v.shape]
    if mismatched:
        shapes = ", ".join(f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched[:3])
        raise ArgumentError(f"{path}: --pretrained-checkpoint tensors do not fit this model ({shapes}); "
                            "use a checkpoint with the same configuration")
    missing, unexpected = model.load_state_dict(source, strict=False)
    if missing or unexpected:
        log.warning("--pretrained-checkpoint %s: %d tensor(s) of the model not in the checkpoint (e.g. %s), "
                    "%d unused (e.g. %s)", path, len(missing), missing[:3], len(unexpected), unexpected[:3])


def hf_bert_folder(path: str) -> Path | None:
    """--model_name_or_path as a Hugging Face BERT folder with weights, or None when it only names a vocab."""
    folder = Path(path)
    has_weights = any((folder / name).is_file() for name in HF_BERT_WEIGHTS)
    return folder if path and has_weights and (folder / "config.json").is_file() else None


# flag -> what it freezes: (role, whether only the decoder's input embeddings)
FREEZING = {"freeze_backbone": ("video", False), "freeze_passt": ("audio", False), "freeze_embedding": ("text", True)}


def apply_freezing(model: nn.Module, config) -> None:
    """requires_grad=False for the parts the freezing flags name."""
    for flag, (role, embeddings_only) in FREEZING.items():
        if getattr(config.optim, flag):
            part = model.part(role)
            (part.get_input_embeddings() if embeddings_only else part).requires_grad_(False)


def build_model(config, device: torch.device) -> nn.Module:
    """The model of ``config.model``, initialised in order: random, --model_name_or_path BERT (the decoder),
    --swin_checkpoint (the video encoder), --passt_checkpoint (the audio encoder), --pretrained_checkpoint
    (everything); then frozen parts."""
    init = config.init
    model = AVLFormer(config.model)
    if "text" in config.run.activation_checkpointing:  # the encoders' switches are in the configuration
        model.part("text").set_gradient_checkpointing(True)
    bert = hf_bert_folder(init.model_name_or_path)
    if bert is not None:
        try:
            not_in_bert = model.load_part_weights("text", bert)
        except (FileNotFoundError, ValueError) as err:
            raise ArgumentError(f"--model-name-or-path: {err}") from None
        log.info("text transformer initialised from %s (%d tensors not in it, e.g. %s)", bert, len(not_in_bert),
                 not_in_bert[:2])
    elif init.model_name_or_path:
        log.info("--model-name-or-path %s holds no BERT weights (config.json + model.safetensors or "
                 "pytorch_model.bin): the text transformer starts from random weights", init.model_name_or_path)
    for role, path in (("video", init.swin_checkpoint), ("audio", init.passt_checkpoint)):
        if path:
            model.load_part_weights(role, path)
    for role in ("video", "audio", "text"):  # Hugging Face parts: the weights of the folder they came from
        folder = getattr(getattr(config.model, role), "path", "")
        if folder:
            try:
                model.load_part_weights(role, folder)
            except (FileNotFoundError, ValueError) as err:
                raise ArgumentError(f"{role}: {err}") from None
            log.info("%s part initialised from %s", role, folder)
    if init.pretrained_checkpoint:
        load_pretrained(model, init.pretrained_checkpoint)
    apply_freezing(model, config)
    return model.to(device)
