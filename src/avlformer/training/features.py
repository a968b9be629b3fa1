"""``avlformer train --features F``: the layers above frozen encoders trained on cached encoder outputs; the
features' fingerprint is checked against these encoders before the first step (docs/training.md, Fast
experiments on cached features).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch
from torch import nn

from avlformer.data.dataset import CaptionDataset, collate
from avlformer.data.features import FeatureFile, FeatureMismatchError, FeatureSpec, feature_path
from avlformer.modeling.avlformer import FEATURE_KEYS
from avlformer.modeling.parts import ENCODER_ROLES, config_values
from avlformer.training.flag_table import ArgumentError, as_argument_error, flag_option
from avlformer.training.setup import build_val_dataset, data_config_for, resolve_yaml

log = logging.getLogger("avlformer.train")


# ------------------------------------------------------------------------------------------------ flags

def check_feature_flags(command_line: dict[str, Any], features: str) -> None:
    """With --features, a flag typed on the command line that could only act on the encoders (which do not run)
    is an error; the same values coming from a --config file (written for end-to-end training) are logged as not
    applying (``not_applying``)."""
    if not features:
        return
    for name, typed in command_line.items():
        if name == "use_checkpoint" and typed:
            why = "the video encoder does not run"
        elif name == "activation_checkpointing" and set(typed) & {"video", "audio"}:
            why = "the encoders do not run (only 'text' applies)"
        elif name == "backbone_coef_lr" and typed != 0:
            why = "the video backbone is frozen"
        elif name in ("freeze_backbone", "freeze_passt") and not typed:
            why = "the encoders are frozen: their outputs are cached"
        else:
            continue
        raise ArgumentError(f"{flag_option(name)}={typed!r} cannot apply with --features: {why}")


def not_applying(config) -> list[str]:
    """What a feature-trained run leaves out, for the log."""
    notes = ["encoder input augmentations (random crops, audio gain/roll, SpecAugment, mel jitter, random "
             "patchout, drop path): the features were computed once, in eval mode"]
    if set(config.run.activation_checkpointing) & {"video", "audio"}:
        notes.append("activation checkpointing of the encoders")
    if config.optim.backbone_coef_lr:
        notes.append(f"--backbone-coef-lr {config.optim.backbone_coef_lr:g} (the backbone is frozen)")
    return notes


# ------------------------------------------------------------------------------------------------ the model

def frozen_state(model: nn.Module, role: str) -> list[tuple[str, torch.Tensor]]:
    """(state-dict name, tensor) of what the features stand for in the ``role`` encoder: the encoder without its
    projection, which stays trainable; sorted by name."""
    names = {id(tensor): name for name, tensor in model.state_dict(keep_vars=True).items()}
    projection = {id(tensor) for tensor in model.projection(role).state_dict(keep_vars=True).values()}
    return sorted(((names[id(tensor)], tensor) for tensor in model.part(role).state_dict(keep_vars=True).values()
                   if id(tensor) not in projection), key=lambda item: item[0])


def encoder_spec(model: nn.Module, dtype: str = "fp32") -> FeatureSpec:
    """The FeatureSpec the frozen encoders of ``model`` produce: token counts, widths and a sha256 over their
    weights and over the settings that shape their eval output (not the ``TRAINING_ONLY`` ones)."""
    cfg = model.config
    settings = {"num_frames": cfg.num_frames, "image_size": cfg.image_size}
    for role in ENCODER_ROLES:
        part = getattr(cfg, role)
        training_only = getattr(part, "TRAINING_ONLY", ())
        settings[role] = {k: v for k, v in config_values(part).items() if k not in training_only}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode())
    for role in ENCODER_ROLES:
        for name, tensor in frozen_state(model, role):
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return FeatureSpec(digest.hexdigest(), cfg.num_video_tokens, cfg.video.token_width, cfg.num_audio_tokens,
                       cfg.audio.token_width, dtype)


def freeze_encoders(model: nn.Module) -> None:
    """requires_grad=False and eval mode for the encoders the features stand for; their projections stay
    trainable."""
    for role in ENCODER_ROLES:
        model.part(role).eval()
        for _, tensor in frozen_state(model, role):
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad_(False)


def prepare_feature_model(model: nn.Module, config, train_dataset) -> None:
    """Freeze the encoders and check that the training features were made by them (one-line error if not)."""
    freeze_encoders(model)
    features = getattr(train_dataset, "features", None)
    if features is not None:
        with as_argument_error(FeatureMismatchError):
            features.check_fits(encoder_spec(model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("training on cached features %s: encoders frozen, %.2f M trainable parameters; not applied: %s",
             config.data.features, trainable / 1e6, "; ".join(not_applying(config)))


# ------------------------------------------------------------------------------------------------ the data

class FeatureCaptionDataset(CaptionDataset):
    """Training items of a split with cached features instead of frames and audio: the same items (one per caption
    or linelist entry), the same MLM masking, and ``video_features`` / ``audio_features`` looked up by key."""

    def __init__(self, yaml_path, features: FeatureFile, data_config=None, tokenizer=None):
        super().__init__(yaml_path, data_config, is_train=True, tokenizer=tokenizer)
        self.features = features
        missing = [key for key in self.keys if key not in features.row_of]
        if missing:
            raise ArgumentError(f"{features.path}: {len(missing)} clip(s) of {self.paths.captions} have no cached "
                                f"features, e.g. {missing[:3]}; run `avlformer extract-features` on this data")
        with as_argument_error(FeatureMismatchError):
            features.check_data(self.recipe)
        self._feature_row = [features.row_of[key] for key in self.keys]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, caption_index = self.items[index]
        video, audio = self.features.clip(self._feature_row[row])
        return {"video_key": self.keys[row], FEATURE_KEYS[0]: video, FEATURE_KEYS[1]: audio,
                **self.train_text(row, caption_index)}


def collate_features(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``collate`` plus the stacked cached features."""
    batch = collate(items)
    for name in FEATURE_KEYS:
        batch[name] = torch.stack([item[name] for item in items])
    return batch


def build_feature_datasets(config, tokenizer):
    """(training items on cached features, the raw validation split or None)."""
    train_yaml = resolve_yaml(config.data.data_dir, config.data.train_yaml)
    if not train_yaml.is_file():  # the data's own problem first, before the features'
        raise FileNotFoundError(f"{train_yaml}: dataset yaml not found")
    data_config = data_config_for(config)
    with as_argument_error():
        features = FeatureFile(feature_path(config.data.features, train_yaml))
    return (FeatureCaptionDataset(train_yaml, features, data_config, tokenizer),
            build_val_dataset(config, tokenizer, data_config))
