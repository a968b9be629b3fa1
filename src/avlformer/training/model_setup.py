"""From a resolved training config to a model: what that model is and costs (said before it is built), weight
initialisation (--model_name_or_path BERT, --swin/--passt_checkpoint, --pretrained_checkpoint) and freezing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avlformer.modeling.avlformer import AVLFormer, describe_model
from avlformer.modeling.checkpoint import load_model
from avlformer.modeling.meta_device import build_on_meta
from avlformer.training.flag_table import ArgumentError

log = logging.getLogger("avlformer.train")

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
    line = f"building the model from {source}: {describe_model(config.model)}"
    params = sum(p.numel() for p in build_on_meta(lambda: AVLFormer(config.model)).parameters())
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
    if not path:
        return None
    folder = Path(path)
    if (folder / "config.json").is_file() and any((folder / name).is_file()
                                                  for name in ("model.safetensors", "pytorch_model.bin")):
        return folder
    return None


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
