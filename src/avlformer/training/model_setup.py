"""From training flags to a model: the AVLFormerConfig (a preset or a JSON file, then the model-shaping flags),
what that model is and costs (said before it is built), weight initialisation (--model_name_or_path BERT,
--swin/--passt_checkpoint, --pretrained_checkpoint) and freezing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avlformer.training.flag_table import FLAGS, ArgumentError, flag_option

log = logging.getLogger("avlformer.train")

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
FLAG_DEFAULTS = {flag.name: flag.default for flag in FLAGS}
# text-transformer size overrides, applied when > 0 (upstream's BERT config overrides)
TEXT_SIZE_FIELDS = {"num_hidden_layers": "num_layers", "hidden_size": "hidden_size",
                    "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size"}
# Above this many parameters, training on the CPU needs tens of GB (the paper model was killed at 22.9 GB).
LARGE_FOR_CPU = 50_000_000


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _absent(tree: dict, path: tuple[str, ...]) -> bool:
    try:
        _get(tree, path)
    except (KeyError, TypeError):
        return True
    return False


def _set(tree: dict, path: tuple[str, ...], value: Any, flag: str) -> None:
    for part in path[:-1]:
        if part not in tree:
            raise ArgumentError(f"{flag_option(flag)}: the model configuration has no '{part}' section")
        tree = tree[part]
    if path[-1] not in tree:
        raise ArgumentError(f"{flag_option(flag)}: the model configuration has no field '{'.'.join(path)}'")
    tree[path[-1]] = value


# ------------------------------------------------------------------------------------------------ configuration

def base_model_tree(preset: str, model_config_path: str, model_config=None) -> dict:
    """The model configuration before flags apply, as a dict: a given AVLFormerConfig, else the
    --model_config file, else the --model_preset."""
    from avlformer.modeling.avlformer import AVLFormerConfig

    if model_config is not None:
        return model_config.to_dict()
    if model_config_path:
        from avlformer.json_files import read_json

        try:
            tree = read_json(model_config_path, "--model-config file")
        except (FileNotFoundError, ValueError) as err:
            raise ArgumentError(str(err)) from None
        if not isinstance(tree, dict):
            raise ArgumentError(f"{model_config_path}: --model-config must hold one JSON object")
        try:  # a file may leave fields out; they take the configuration's defaults, which the flags then see
            return AVLFormerConfig.from_dict(tree).to_dict()
        except (TypeError, ValueError) as err:
            raise ArgumentError(f"{model_config_path}: not a valid model configuration ({err})") from None
    return {"paper": AVLFormerConfig.paper, "tiny": AVLFormerConfig.tiny}[preset]().to_dict()


def preset_flag_values(tree: dict) -> dict[str, Any]:
    """The model-shaping flags' values in a base configuration: the precedence layer between the flag defaults
    and the config file. A field this configuration lacks leaves the flag's default."""
    values = {}
    for flag, path in CONFIG_FIELDS.items():
        try:
            values[flag] = _get(tree, path)
        except (KeyError, TypeError):
            continue
    if "max_seq_length" in values:  # there is no second text segment: caption positions = text positions
        values["max_seq_a_length"] = values["max_seq_length"]
    return values


def model_config_from(values: dict[str, Any], tree: dict):
    """The AVLFormerConfig for resolved flag ``values`` on top of ``tree``; derives --attn_mask_type and
    --max_img_seq_length into ``values`` (a given value that disagrees is an error, not silently replaced)."""
    from avlformer.modeling.avlformer import AVLFormerConfig

    tree = {key: dict(value) if isinstance(value, dict) else value for key, value in tree.items()}
    for flag, path in CONFIG_FIELDS.items():
        if _absent(tree, path) and values[flag] == FLAG_DEFAULTS[flag]:
            continue  # a part without this field (a Hugging Face decoder has no hidden_dropout), flag not given
        _set(tree, path, values[flag], flag)
    # the visual width appears again in the parts that carry it (the decoder's input, PaSST's projection)
    for role, key in (("text", "img_feature_dim"), ("audio", "out_dim")):
        if isinstance(tree.get(role), dict) and key in tree[role]:
            tree[role][key] = tree["img_feature_dim"]
    for flag, field in TEXT_SIZE_FIELDS.items():
        if values[flag] > 0:
            _set(tree, ("text", field), values[flag], flag)
    for encoder in values["activation_checkpointing"]:
        if encoder != "text":  # the text transformer's switch lives on the module, see build_model
            _set(tree, (encoder, "use_checkpoint"), True, "activation_checkpointing")
    try:
        config = AVLFormerConfig.from_dict(tree)
    except (TypeError, ValueError) as err:
        source = values["model_config"] or f"--model-preset {values['model_preset']}"
        raise ArgumentError(f"the model configuration ({source} + flags) is invalid: {err}") from None
    mask_type = "learn_vid_att" if config.learn_mask_enabled else "seq2seq"
    if values["attn_mask_type"] not in (None, mask_type):
        raise ArgumentError(f"--attn-mask-type {values['attn_mask_type']} contradicts --learn-mask-enabled "
                            f"{config.learn_mask_enabled}")
    values["attn_mask_type"] = mask_type
    derived = config.num_av_tokens
    if values["max_img_seq_length"] not in (None, derived):
        raise ArgumentError(f"--max-img-seq-length {values['max_img_seq_length']} disagrees with this model's "
                            f"{derived} visual tokens (video + audio); leave it out, it is derived")
    values["max_img_seq_length"] = derived
    return config


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


# ------------------------------------------------------------------------------------------------ what is built

def describe(config, device: torch.device) -> tuple[str, bool]:
    """(one line saying which model is built, its main dimensions and size; whether that size is out of reach
    on this device), for the log before anything is built."""
    from avlformer.modeling.avlformer import AVLFormer, describe_model
    from avlformer.modeling.meta_device import build_on_meta

    source = config.model_config or f"the {config.model_preset} preset (--model-preset)"
    line = f"building the model from {source}: {describe_model(config.model)}"
    params = sum(p.numel() for p in build_on_meta(lambda: AVLFormer(config.model)).parameters())
    too_large = device.type == "cpu" and params > LARGE_FOR_CPU
    if too_large:
        line += ("; training a model this size on the CPU needs tens of GB of memory (weights, AdamW state and "
                 "activations; --model-preset tiny or --model-config FILE gives a small one)")
    return line, too_large


# ------------------------------------------------------------------------------------------------ building

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
        if getattr(config, flag):
            part = model.part(role)
            (part.get_input_embeddings() if embeddings_only else part).requires_grad_(False)


def build_model(config, device: torch.device) -> nn.Module:
    """The model of ``config.model``, initialised in order: random, --model_name_or_path BERT (the decoder),
    --swin_checkpoint (the video encoder), --passt_checkpoint (the audio encoder), --pretrained_checkpoint
    (everything); then frozen parts."""
    from avlformer.modeling.avlformer import AVLFormer

    model = AVLFormer(config.model)
    if "text" in config.activation_checkpointing:  # the encoders' switches are in the configuration
        model.part("text").set_gradient_checkpointing(True)
    bert = hf_bert_folder(config.model_name_or_path)
    if bert is not None:
        try:
            not_in_bert = model.load_part_weights("text", bert)
        except (FileNotFoundError, ValueError) as err:
            raise ArgumentError(f"--model-name-or-path: {err}") from None
        log.info("text transformer initialised from %s (%d tensors not in it, e.g. %s)", bert, len(not_in_bert),
                 not_in_bert[:2])
    elif config.model_name_or_path:
        log.info("--model-name-or-path %s holds no BERT weights (config.json + model.safetensors or "
                 "pytorch_model.bin): the text transformer starts from random weights", config.model_name_or_path)
    for role, path in (("video", config.swin_checkpoint), ("audio", config.passt_checkpoint)):
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
    if config.pretrained_checkpoint:
        load_pretrained(model, config.pretrained_checkpoint)
    apply_freezing(model, config)
    return model.to(device)
