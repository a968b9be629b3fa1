"""Model checkpoints: our folder format, upstream checkpoint folders and the released ``model.bin``
(docs/architecture.md, "Checkpoint contract").

The model is built on the meta device and takes the file's tensors by assignment (modeling/meta_device.py) after
the config is checked against the weights' names and shapes, so a crafted ``config.json`` is refused before
anything is built. Loading is all-or-nothing; upstream keys we do not use are dropped by name and reported.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from itertools import chain
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from avlformer.atomic import atomic_folder
from avlformer.data.recipe import RECIPE_NAME, PreprocessRecipe, recipe_for_checkpoint
from avlformer.data.token_ids import default_vocab_dir
from avlformer.flags import parse_bool, parse_float, parse_int, parse_text
from avlformer.json_files import read_json
from avlformer.modeling import passt as passt_module
from avlformer.modeling import video_swin as video_swin_module
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.meta_device import (CheckpointMismatchError, TooManyTensors, build_on_meta, check_state_dict,
                                           load_by_assignment, state_shapes)
from avlformer.modeling.passt import PasstConfig
from avlformer.modeling.text_transformer import TextTransformerConfig
from avlformer.modeling.video_swin import VideoSwinConfig
from avlformer.modeling.weights_file import read_safetensors_shapes, read_weights_file

logger = logging.getLogger(__name__)

WEIGHTS_NAME, CONFIG_NAME, VOCAB_NAME = "model.safetensors", "config.json", "vocab.txt"
UPSTREAM_WEIGHTS_NAME = "model.bin"
# Saved by upstream, never used in its forward pass (docs/upstream.md §3.3, §3.4).
UPSTREAM_UNUSED_PREFIXES = ("trans_encoder.cls_img_feat.", "trans_encoder.bert.pooler.", "passt.net.head.0.")


# ------------------------------------------------------------------------------------------------ saving
def save_checkpoint(folder: str | os.PathLike, model: AVLFormer, config: AVLFormerConfig,
                    recipe: PreprocessRecipe) -> Path:
    """Write (atomically replace) ``folder``."""
    with atomic_folder(folder) as staging:
        write_checkpoint_files(staging, model.state_dict(), config, recipe)
    return Path(folder)


def write_checkpoint_files(folder: Path, state_dict: Mapping[str, torch.Tensor], config: AVLFormerConfig,
                           recipe: PreprocessRecipe, vocab_dir: str | os.PathLike | None = None) -> None:
    """The files of a checkpoint, into an existing staging folder. ``vocab_dir``: the model's vocabulary
    (default: a causal LM decoder's own tokenizer folder, else the shipped one)."""
    weights, stored = {}, set()
    for name, tensor in state_dict.items():
        # A tied tensor (a causal LM's input and output embeddings) appears under both names; safetensors stores
        # each name its own copy, and loading re-ties them (retie_weights).
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        tensor = tensor.detach().cpu().contiguous()
        weights[name] = tensor.clone() if key in stored else tensor
        stored.add(key)
    save_file(weights, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    config.save(folder / CONFIG_NAME)
    recipe.save(folder / RECIPE_NAME)
    vocab_folder = Path(vocab_dir or getattr(config.text, "path", "") or default_vocab_dir())
    if (vocab_folder / VOCAB_NAME).is_file():
        shutil.copyfile(vocab_folder / VOCAB_NAME, folder / VOCAB_NAME)
    else:  # a causal LM's own tokenizer (data/causal_tokenizer.py): its files travel with the checkpoint
        from avlformer.data.tokenizer import load_tokenizer

        load_tokenizer(str(vocab_folder)).save(folder)


# ------------------------------------------------------------------------------------------------ loading
def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", strict: bool = True, *,
               model_class: type[AVLFormer] = AVLFormer) -> tuple[AVLFormer, AVLFormerConfig]:
    """Load our checkpoint folder, an upstream folder or a released ``model.bin`` (config from
    ``../log/args.json`` when it exists, else the paper's). ``strict=False`` tolerates missing or unexpected keys
    (logged), never misshaped ones. ``model_class``: the AVLFormer subclass to build."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            return _load_ours(path / WEIGHTS_NAME, path / CONFIG_NAME, device, strict, model_class)
        if (path / UPSTREAM_WEIGHTS_NAME).is_file():
            return _load_upstream(path / UPSTREAM_WEIGHTS_NAME, device, strict, model_class)
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} (our checkpoint) or {UPSTREAM_WEIGHTS_NAME} "
                                f"(upstream checkpoint) in this folder")
    if path.is_file():
        if path.suffix == ".safetensors":
            if not (path.parent / CONFIG_NAME).is_file():
                raise FileNotFoundError(f"{path}: weights without their {CONFIG_NAME} (expected beside them, in "
                                        f"{path.parent.absolute()})")
            return _load_ours(path, path.parent / CONFIG_NAME, device, strict, model_class)
        return _load_upstream(path, device, strict, model_class)
    raise FileNotFoundError(f"{path}: no such checkpoint file or folder")


def checkpoint_folder(path: str | os.PathLike) -> tuple[Path, bool]:
    """(the folder holding a checkpoint's side files, whether it is a released/upstream checkpoint)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    released = not (folder / WEIGHTS_NAME).is_file() or (path.is_file() and path.suffix != ".safetensors")
    return folder, released


def checkpoint_recipe(path: str | os.PathLike) -> PreprocessRecipe:
    """The checkpoint's ``preprocessor_config.json``; released/upstream ones (and, with a warning, our older
    ones without a recipe) get the paper recipe."""
    folder, released = checkpoint_folder(path)
    return recipe_for_checkpoint(folder, released=released)


def checkpoint_vocab_dir(path: str | os.PathLike) -> Path:
    """The checkpoint's own ``vocab.txt`` (or causal LM tokenizer) folder, else the shipped bert-base-uncased."""
    from avlformer.data.causal_tokenizer import is_hf_tokenizer_folder

    folder, _ = checkpoint_folder(path)
    return folder if (folder / VOCAB_NAME).is_file() or is_hf_tokenizer_folder(folder) else default_vocab_dir()


def _load_ours(weights_path: Path, config_path: Path, device, strict: bool, model_class: type[AVLFormer]):
    config = AVLFormerConfig.load(config_path)
    header = read_safetensors_shapes(weights_path)
    model = _build_meta_model(config, len(header), config_path, weights_path, model_class)
    missing = _check_against(header, model, strict, weights_path)
    state_dict = read_weights_file(weights_path, "checkpoint")
    return _with_weights(model, config, state_dict, missing, device, model_class), config


def _load_upstream(weights_path: Path, device, strict: bool, model_class: type[AVLFormer]):
    args_path = weights_path.parent.parent / "log" / "args.json"
    if args_path.is_file():
        config = config_from_upstream_args(read_json(args_path, "upstream args.json"), source=str(args_path))
        logger.info("%s: architecture from %s", weights_path, args_path)
    else:
        args_path = None
        config = AVLFormerConfig.paper()
        logger.info("%s: no ../log/args.json, assuming the paper configuration", weights_path)
    state_dict = read_weights_file(weights_path, "upstream model.bin")  # memory-mapped: no tensor is read yet
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{weights_path}: expected a plain state dict (name -> tensor), found non-tensor values")
    model = _build_meta_model(config, len(state_dict), args_path or "the paper configuration", weights_path,
                              model_class)
    try:
        converted, dropped = convert_upstream_state_dict(state_dict, config, strict, state_shapes(model))
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{weights_path}: {error}") from None
    logger.info("%s: dropped %d unused upstream tensors (%s...)", weights_path, len(dropped), ", ".join(dropped[:3]))
    missing = _check_against(converted, model, strict, weights_path)
    return _with_weights(model, config, converted, missing, device, model_class), config


def _build_meta_model(config: AVLFormerConfig, file_tensors: int, config_source, weights_path: Path,
                      model_class: type[AVLFormer] = AVLFormer) -> AVLFormer:
    # The slack covers non-persistent buffers, registered but never stored.
    limit = 2 * file_tensors + 64
    try:
        return build_on_meta(lambda: model_class(config), max_tensors=limit)
    except TooManyTensors:
        raise CheckpointMismatchError(
            f"{weights_path}: holds {file_tensors} tensors, but {config_source} describes a model with more than "
            f"{limit}; the configuration does not belong to these weights") from None


def _check_against(given: Mapping[str, Any], model: AVLFormer, strict: bool, source: Path) -> list[str]:
    try:
        missing, unexpected = check_state_dict(given, state_shapes(model), strict)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{source}: {error}") from None
    if missing or unexpected:
        logger.warning("%s: loaded non-strictly; missing %s, unexpected (ignored) %s", source, missing, unexpected)
    return missing


def _with_weights(meta_model: AVLFormer, config: AVLFormerConfig, state_dict: Mapping[str, torch.Tensor],
                  missing: list[str], device, model_class: type[AVLFormer] = AVLFormer) -> AVLFormer:
    """The model holding the checked ``state_dict`` on ``device``: the meta-built one by assignment, or a
    normally initialised one when a non-strict load left tensors ``missing``."""
    expected = meta_model.state_dict()
    kept = {name: tensor for name, tensor in state_dict.items() if name in expected}
    if missing:
        model = model_class(config)
        model.load_state_dict(kept, strict=False)
        return model.to(device)
    model = load_by_assignment(meta_model, kept)
    for module in model.modules():  # assignment gives tied names separate tensors: tie them again
        retie = getattr(module, "retie_weights", None)
        if retie is not None:
            retie()
    if torch.device(device).type != "cpu":
        return model.to(device)
    # Assigned tensors live in the memory-mapped file's 4 KB page-cache pages; decoding streams every weight each
    # step, faster from a copy in process memory (huge pages; benchmarks/RESULTS.md, caption_e2e).
    with torch.no_grad():
        for tensor in chain(model.parameters(), model.buffers()):
            tensor.data = tensor.data.clone()
    return model


# ------------------------------------------------------------------------------------------------ upstream
def convert_upstream_state_dict(state_dict: Mapping[str, torch.Tensor], config: AVLFormerConfig, strict: bool,
                                expected: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Upstream ``VideoTransformer`` state dict -> (ours, dropped keys): Swin and PaSST keys through their
    encoders' converters, unused heads dropped, the rest checked against ``expected`` (the model's shapes)."""
    swin_part, passt_part, converted, dropped, problems = {}, {}, {}, [], []
    for name, tensor in state_dict.items():
        if name.startswith(UPSTREAM_UNUSED_PREFIXES):
            dropped.append(name)
        elif name.startswith("swin."):
            swin_part[name.removeprefix("swin.")] = tensor
        elif name.startswith("passt.net."):
            passt_part[name.removeprefix("passt.")] = tensor
        else:
            converted[name] = tensor
    for prefix, stripped, part, module, sub_config in (
            ("swin.", "swin.", swin_part, video_swin_module, config.video),
            ("passt.net.", "passt.", passt_part, passt_module, config.audio)):
        try:
            ours, sub_dropped = module.checkpoint_filter_fn(part, sub_config)
        except ValueError as error:
            problems.append(str(error))
            continue
        converted.update({prefix + k: v for k, v in ours.items()})
        dropped.extend(stripped + k for k in sub_dropped)
    encoder_prefixes = ("swin.", "passt.net.")
    rest_expected = {k: v for k, v in expected.items() if not k.startswith(encoder_prefixes)}
    rest_given = {k: v for k, v in converted.items() if not k.startswith(encoder_prefixes)}
    try:
        check_state_dict(rest_given, rest_expected, strict)
    except CheckpointMismatchError as error:
        problems.append(str(error))
    if problems:
        raise CheckpointMismatchError(" | ".join(problems))
    return converted, sorted(dropped)


_ARG_KINDS = {int: (parse_int, "an integer"), float: (parse_float, "a number"), bool: (parse_bool, "true or false"),
              str: (parse_text, "a string")}


def config_from_upstream_args(args: Mapping[str, Any], source: str = "args.json") -> AVLFormerConfig:
    """Upstream ``log/args.json`` -> our config. Missing arguments take upstream's parser defaults, except
    ``learn_mask_enabled`` (docs/upstream.md §2.6) and run.sh's loss weights; a mistyped one is an error naming
    ``source`` and the argument."""
    if not isinstance(args, Mapping):
        raise ValueError(f"{source}: expected a JSON object of upstream arguments, got {type(args).__name__}")

    def arg(name: str, default):
        parse, expected = _ARG_KINDS[type(default)]
        value = args.get(name, default)
        try:
            return parse(value)
        except argparse.ArgumentTypeError:
            raise ValueError(f"{source}: {name} must be {expected}, got {value!r}") from None

    size = arg("vidswin_size", "base")
    presets = {"tiny": VideoSwinConfig.tiny, "small": VideoSwinConfig.small, "base": VideoSwinConfig.base}
    if size not in presets:
        raise ValueError(f"{source}: unknown vidswin_size {size!r} (expected one of {sorted(presets)})")
    img_feature_dim = arg("img_feature_dim", 512)
    text = TextTransformerConfig(img_feature_dim=img_feature_dim, hidden_dropout=arg("drop_out", 0.1))
    for ours, theirs in (("num_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"),
                         ("num_heads", "num_attention_heads"), ("intermediate_size", "intermediate_size")):
        value = arg(theirs, -1)
        if value > 0:  # upstream: -1 keeps bert-base
            setattr(text, ours, value)
    values = dict(num_frames=arg("max_num_frames", 32), image_size=arg("img_res", 224),
                  learn_mask_enabled=arg("learn_mask_enabled", True),
                  sparse_mask_soft2hard=arg("sparse_mask_soft2hard", False),
                  lm_loss_weight=arg("lambda_", 0.1), sparsity_loss_weight=arg("loss_sparse_w", 0.5),
                  max_seq_length=arg("max_seq_length", 300), max_gen_length=arg("max_gen_length", 115),
                  num_beams=arg("num_beams", 1), length_penalty=arg("length_penalty", 1.0))
    try:  # the overrides and the whole config validated
        text = TextTransformerConfig.from_dict(text.to_dict())
        return AVLFormerConfig(video=presets[size](), audio=PasstConfig(out_dim=img_feature_dim), text=text,
                               img_feature_dim=img_feature_dim, **values)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
