"""What a training run sets up before its first step: seeds and (optionally) deterministic kernels, the log,
the tokenizer folder, the datasets and the preprocessing recipe they were prepared with."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from avlformer.atomic import write_text_atomic
from avlformer.data.dataset import CaptionDataset, DataConfig
from avlformer.data.recipe import recipe_for_yaml
from avlformer.training.flag_table import ArgumentError, upstream_values

log = logging.getLogger("avlformer.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


@contextlib.contextmanager
def determinism(enabled: bool, device: torch.device):
    """--deterministic for the duration of a run: deterministic kernels (an op without one raises instead of
    running nondeterministically), cuDNN without autotuning, a fixed cuBLAS workspace, and one intra-op thread on
    the CPU, where several threads split float reductions differently from run to run. The previous settings are
    restored afterwards, so a caller's process is left as it was."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    # cuBLAS reads this when it creates its handle (the first matmul), which comes after this point.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.set_num_threads(saved[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[3], saved[4]


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
    data_config = DataConfig(num_frames=config.model.num_frames, image_size=config.model.image_size,
                             max_seq_length=config.model.max_seq_length, mask_prob=config.data.mask_prob,
                             max_masked_tokens=config.data.max_masked_tokens)
    audio = getattr(config.model, "audio", None)
    for name in ("sample_rate", "clip_seconds"):
        if audio is not None and hasattr(audio, name):
            setattr(data_config, name, getattr(audio, name))
    return data_config


def build_val_dataset(config, tokenizer, data_config=None):
    """The raw validation split, or None when training does not validate."""
    if not config.run.evaluate_during_training:
        return None
    return CaptionDataset(resolve_yaml(config.data.data_dir, config.data.val_yaml),
                          data_config or data_config_for(config), False, tokenizer)


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
