"""From training flags to a model: the AVLFormerConfig (preset or JSON, then the model-shaping flags that were
given explicitly), weight initialisation from --pretrained_checkpoint, and freezing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avlformer.training.args import ArgumentError, flag_option

# flag -> path of the AVLFormerConfig.to_dict() field it sets
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "max_num_frames": ("num_frames",),
    "img_res": ("image_size",),
    "learn_mask_enabled": ("learn_mask_enabled",),
    "sparse_mask_soft2hard": ("sparse_mask_soft2hard",),
    "lambda_": ("lm_loss_weight",),
    "loss_sparse_w": ("sparsity_loss_weight",),
    "max_seq_length": ("max_seq_length",),
    "max_gen_length": ("max_gen_length",),
    "num_beams": ("num_beams",),
    "length_penalty": ("length_penalty",),
    "img_feature_dim": ("img_feature_dim",),
    "drop_out": ("text", "hidden_dropout"),
}
# text-transformer size overrides, applied when > 0 (upstream's BERT config overrides)
TEXT_SIZE_FIELDS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size",
                    "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size"}


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any, flag: str) -> None:
    for part in path[:-1]:
        if part not in tree:
            raise ArgumentError(f"{flag_option(flag)}: the model configuration has no '{part}' section")
        tree = tree[part]
    if path[-1] not in tree:
        raise ArgumentError(f"{flag_option(flag)}: the model configuration has no field '{'.'.join(path)}'")
    tree[path[-1]] = value


def base_config_dict(args) -> dict:
    from avlformer.modeling.avlformer import AVLFormerConfig

    if args.model_config:
        path = Path(args.model_config)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArgumentError(f"{path}: --model-config file not found") from None
        except json.JSONDecodeError as err:
            raise ArgumentError(f"{path}: not valid JSON ({err})") from None
    preset = {"paper": AVLFormerConfig.paper, "tiny": AVLFormerConfig.tiny}[args.model_preset]
    return preset().to_dict()


def build_model_config(args, explicit: set[str]):
    """The model configuration, and ``args`` updated to the values actually used (so args.json tells the truth):
    flags given explicitly override the preset; the others take the preset's value."""
    from avlformer.modeling.avlformer import AVLFormerConfig

    tree = base_config_dict(args)
    for flag, path in CONFIG_FIELDS.items():
        if flag in explicit:
            _set(tree, path, getattr(args, flag), flag)
        else:
            try:
                setattr(args, flag, _get(tree, path))
            except KeyError:
                pass  # a field this model configuration does not have keeps the flag's default
    # the visual width appears three times in the configuration and must agree
    tree["text"]["img_feature_dim"] = tree["audio"]["out_dim"] = tree["img_feature_dim"]
    for flag, field in TEXT_SIZE_FIELDS.items():
        if getattr(args, flag) > 0:
            _set(tree, ("text", field), getattr(args, flag), flag)
    for encoder in args.activation_checkpointing:
        if encoder != "text":  # the text transformer's switch lives on the module, see build_model
            _set(tree, (encoder, "use_checkpoint"), True, "activation_checkpointing")
    try:
        config = AVLFormerConfig.from_dict(tree)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"the model configuration built from the flags is invalid: {err}") from None
    mask_type = "learn_vid_att" if config.learn_mask_enabled else "seq2seq"
    if "attn_mask_type" in explicit and args.attn_mask_type != mask_type:
        raise ArgumentError(f"--attn-mask-type {args.attn_mask_type} contradicts --learn-mask-enabled "
                            f"{config.learn_mask_enabled}")
    args.attn_mask_type = mask_type
    check_visual_length(args, explicit, config.num_av_tokens)
    return config


def check_visual_length(args, explicit: set[str], derived: int) -> None:
    """--max_img_seq_length is derived (video tokens + audio tokens), as upstream recomputed it; a given value
    that disagrees is an error rather than silently replaced."""
    if "max_img_seq_length" in explicit and args.max_img_seq_length != derived:
        raise ArgumentError(f"--max-img-seq-length {args.max_img_seq_length} disagrees with this model's "
                            f"{derived} visual tokens (video + audio); leave it out, it is derived")
    args.max_img_seq_length = derived


def adopt_model_values(args, explicit: set[str], config) -> None:
    """For a model handed in ready-made: the model-shaping flags take its values; an explicit flag that
    disagrees with the model is an error (it could not take effect)."""
    tree = config.to_dict()
    for flag, path in CONFIG_FIELDS.items():
        try:
            value = _get(tree, path)
        except KeyError:
            continue
        if flag in explicit and getattr(args, flag) != value:
            raise ArgumentError(f"{flag_option(flag)} {getattr(args, flag)!r} disagrees with the given model's "
                                f"{'.'.join(path)} = {value!r}")
        setattr(args, flag, value)
    args.attn_mask_type = "learn_vid_att" if config.learn_mask_enabled else "seq2seq"
    args.max_img_seq_length = config.num_av_tokens


def load_pretrained(model: nn.Module, path: str) -> None:
    """Every tensor of a checkpoint (ours, an upstream folder or a released model.bin) whose name and shape match;
    missing or mismatched names are reported, not silently skipped."""
    from avlformer.modeling.checkpoint import load_model

    source = load_model(path, "cpu")[0].state_dict()
    target = model.state_dict()
    mismatched = [k for k, v in source.items() if k in target and target[k].shape != v.shape]
    if mismatched:
        shapes = ", ".join(f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in mismatched[:3])
        raise ArgumentError(f"{path}: --pretrained-checkpoint tensors do not fit this model ({shapes}); "
                            "use a checkpoint with the same configuration")
    missing, unexpected = model.load_state_dict(source, strict=False)
    if missing or unexpected:
        print(f"note: --pretrained-checkpoint {path}: {len(missing)} tensor(s) of the model not in the checkpoint "
              f"(e.g. {missing[:3]}), {len(unexpected)} unused (e.g. {unexpected[:3]})")


def apply_freezing(model: nn.Module, args) -> list[str]:
    """requires_grad=False for the frozen parts; returns the frozen top-level parts for the log."""
    frozen = []
    rules = [("freeze_backbone", "swin", None), ("freeze_passt", "passt", None),
             ("freeze_embedding", "trans_encoder", "word_embeddings")]
    for flag, module_name, substring in rules:
        if not getattr(args, flag):
            continue
        module = getattr(model, module_name, None)
        if module is None:
            raise ArgumentError(f"{flag_option(flag)}: the model has no '{module_name}' module")
        for name, param in module.named_parameters():
            if substring is None or substring in name:
                param.requires_grad_(False)
        frozen.append(module_name if substring is None else f"{module_name}.*{substring}*")
    return frozen


def build_model(args, config, device: torch.device) -> nn.Module:
    from avlformer.modeling.avlformer import AVLFormer

    model = AVLFormer(config)
    if "text" in args.activation_checkpointing:
        model.trans_encoder.set_gradient_checkpointing(True)
    if args.swin_checkpoint:
        from avlformer.modeling.video_swin import load_official_weights as load_swin

        load_swin(model.swin, args.swin_checkpoint)
    if args.passt_checkpoint:
        from avlformer.modeling.passt import load_official_weights as load_passt

        load_passt(model.passt, args.passt_checkpoint)
    if args.pretrained_checkpoint:
        load_pretrained(model, args.pretrained_checkpoint)
    apply_freezing(model, args)
    return model.to(device)
