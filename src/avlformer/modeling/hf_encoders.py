"""Encoders from ``transformers`` as parts (docs/models.md): ``hf_video`` (a video model) and ``hf_frames`` (an
image model's vision tower applied to each frame, then pooled); the shared base of these and ``hf_audio``.

Frames arrive normalised with ImageNet's (``data/transforms.py``) and are re-normalised as the folder's processor
would have made them (docs/models.md, Preprocessing); those settings live in the part's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from avlformer.config_fields import JsonDataclass
from avlformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from avlformer.json_files import read_json
from avlformer.modeling.hf_folder import (TIMM_TYPE, check_model_folder, config_object, cpu_build,
                                          read_folder_state, read_model_config, safetensors_files,
                                          set_hf_checkpointing)

VIDEO_TYPES = ("videomae", "timesformer", "vivit")
IMAGE_KINDS = ("clip", "siglip", "dinov2", "vit", "clip_vision_model", "siglip_vision_model", "xclip", TIMM_TYPE)
ENCODER_TRAINING = ("full", "frozen")
PREPROCESSOR_NAME = "preprocessor_config.json"


def _preprocessor(folder, what: str) -> dict[str, Any]:
    path = folder / PREPROCESSOR_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {PREPROCESSOR_NAME}; the {what}'s preprocessing (its processor "
                                f"config) must come with the model")
    return read_json(path, f"{what} processor config")


def _kind_error(folder, hf_config: dict, what: str, kinds) -> ValueError:
    return ValueError(f"{folder}: model_type {hf_config['model_type']!r} cannot serve as {what} (supported: "
                      f"{', '.join(kinds)})")


@dataclass
class _HFEncoderConfig(JsonDataclass):
    # Fields that leave the eval output alone (cached features stay valid; the weights are hashed on their own).
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("path", "training", "lr_multiplier", "trust_remote_code")
    hf_config: dict = field(default_factory=dict)
    path: str = ""
    training: str = "full"
    lr_multiplier: float = 1.0
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.training not in ENCODER_TRAINING:
            raise ValueError(f"training {self.training!r} must be one of {', '.join(ENCODER_TRAINING)}")
        if not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError("hf_config has no model_type (build this config with from_folder)")

    def hf(self):
        return config_object(self.hf_config, self.trust_remote_code)

    def describe(self) -> str:
        return f"{self.path.rstrip('/').split('/')[-1] or self.hf_config['model_type']} ({self.training})"


# ----------------------------------------------------------------------------------------------------- video
def _pixel_recipe(folder, hf_config: dict, what: str) -> dict[str, Any]:
    """How the model's processor turns 0..255 pixels into its input: ``(x · scale / 255 - offset - mean) / std``
    (ViViT's scales by 2 and offsets by 1; a timm folder states mean/std in its ``pretrained_cfg``)."""
    if hf_config["model_type"] == TIMM_TYPE:
        pre = hf_config.get("pretrained_cfg") or {}
        return {"image_mean": list(pre.get("mean", IMAGENET_MEAN)), "image_std": list(pre.get("std", IMAGENET_STD))}
    pre = _preprocessor(folder, what)
    normalise = pre.get("do_normalize", True)
    return {"image_mean": list(pre.get("image_mean", IMAGENET_MEAN)) if normalise else [0.0] * 3,
            "image_std": list(pre.get("image_std", IMAGENET_STD)) if normalise else [1.0] * 3,
            "pixel_scale": round(255 * pre.get("rescale_factor", 1 / 255), 6) if pre.get("do_rescale", True) else 255.0,
            "pixel_offset": 1.0 if pre.get("offset") else 0.0}


@dataclass
class HFVideoConfig(_HFEncoderConfig):
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    pixel_scale: float = 1.0   # the processor's rescale_factor x 255 (1 for the usual 1/255)
    pixel_offset: float = 0.0  # subtracted after rescaling (ViViT's processor: 1)

    WHAT, KINDS = "video encoder", VIDEO_TYPES

    @classmethod
    def from_folder(cls, path: str, **values):
        """The config of the model in ``path``: its config.json and processor config (scaling, mean/std)."""
        folder = check_model_folder(path, cls.WHAT)
        hf_config = read_model_config(folder, cls.WHAT)
        if hf_config["model_type"] not in cls.KINDS:
            raise _kind_error(folder, hf_config, f"a {cls.WHAT}", cls.KINDS)
        return cls(hf_config=hf_config, path=str(folder), **_pixel_recipe(folder, hf_config, cls.WHAT), **values)

    @property
    def token_width(self) -> int:
        return int(self.hf_config["hidden_size"])

    def num_tokens(self, num_frames: int, image_size: int) -> int:
        hf = self.hf_config
        patch = hf.get("patch_size", 16)
        if hf["model_type"] == "videomae":
            return num_frames // hf.get("tubelet_size", 2) * (image_size // patch) ** 2
        if hf["model_type"] == "timesformer":
            return 1 + num_frames * (image_size // patch) ** 2
        tubelet = hf.get("tubelet_size", [2, 16, 16])
        return 1 + num_frames // tubelet[0] * (image_size // tubelet[1]) * (image_size // tubelet[2])

    def check_fits(self, model_config) -> None:
        hf = self.hf_config
        frames = hf.get("num_frames", model_config.num_frames)
        size = hf.get("image_size", model_config.image_size)
        size = size[0] if isinstance(size, list) else size
        if (frames, size) != (model_config.num_frames, model_config.image_size):
            raise ValueError(f"the video encoder takes {frames} frames of {size} px, the model gives "
                             f"{model_config.num_frames} of {model_config.image_size} px")


def _renormalise(frames: torch.Tensor, config: HFVideoConfig) -> torch.Tensor:
    """ImageNet-normalised frames (B, T, 3, H, W) -> what the model's own processor gives (``_pixel_recipe``)."""
    shape = (1, 1, 3, 1, 1)
    given_mean, given_std = (frames.new_tensor(v).view(shape) for v in (IMAGENET_MEAN, IMAGENET_STD))
    mean, std = frames.new_tensor(config.image_mean).view(shape), frames.new_tensor(config.image_std).view(shape)
    pixels = frames * given_std + given_mean
    if config.pixel_scale != 1.0 or config.pixel_offset:
        pixels = pixels * config.pixel_scale - config.pixel_offset
    return (pixels - mean) / std


class _HFEncoder(nn.Module):
    """Holds ``self.model = build()``, built on the CPU even inside build_on_meta (hf_folder.cpu_build)."""

    def __init__(self, config, build):
        super().__init__()
        self.config = config
        with cpu_build():
            self.model = build()
        self.model.requires_grad_(config.training == "full")

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.model, enabled)


class HFVideoEncoder(_HFEncoder):
    def __init__(self, config: HFVideoConfig):
        from transformers import AutoModel

        # ViViT's pooler is unused here (and absent from its video-classification checkpoints)
        extra = {"add_pooling_layer": False} if config.hf_config["model_type"] == "vivit" else {}
        super().__init__(config, lambda: AutoModel.from_config(config.hf(), **extra))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=_renormalise(frames, self.config)).last_hidden_state


# ----------------------------------------------------------------------------------------------------- frames
@dataclass
class HFFramesConfig(HFVideoConfig):
    pool: int = 2   # each frame's patch grid is average-pooled to pool x pool tokens
    group: int = 2  # then each run of `group` frames is averaged

    WHAT, KINDS = "per-frame image encoder", IMAGE_KINDS

    def vision(self):
        """The vision tower's config (a CLIP/SigLIP/X-CLIP folder holds text and vision towers)."""
        hf = self.hf()
        return getattr(hf, "vision_config", None) or hf

    @property
    def token_width(self) -> int:
        if self.hf_config["model_type"] == TIMM_TYPE:
            return int(self.hf_config["num_features"])
        return int(self.vision().hidden_size)

    @property
    def image_size(self) -> int:
        if self.hf_config["model_type"] == TIMM_TYPE:
            return int((self.hf_config.get("pretrained_cfg") or {}).get("input_size", [3, 224, 224])[-1])
        size = self.vision().image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def num_tokens(self, num_frames: int, image_size: int) -> int:
        return num_frames // self.group * self.pool ** 2

    def check_fits(self, model_config) -> None:
        if model_config.num_frames % self.group:
            raise ValueError(f"video.group {self.group} does not divide num_frames {model_config.num_frames}")
        if self.image_size != model_config.image_size:
            raise ValueError(f"the image encoder takes {self.image_size} px frames, the model gives "
                             f"{model_config.image_size}")
        frames = getattr(self.vision(), "num_frames", None) if self.hf_config["model_type"] == "xclip" else None
        if frames is not None and frames != model_config.num_frames:  # its frames exchange messages in each layer
            raise ValueError(f"the X-CLIP vision tower takes {frames} frames, the model gives "
                             f"{model_config.num_frames}")

    def describe(self) -> str:
        return f"{super().describe()} per frame, {self.pool}x{self.pool} tokens per {self.group} frames"


class HFFramesEncoder(_HFEncoder):
    def __init__(self, config: HFFramesConfig):
        super().__init__(config, lambda: _vision_model(config))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        batch, num_frames = frames.shape[:2]
        pixels = _renormalise(frames, cfg).flatten(0, 1)
        hidden = self.model(pixel_values=pixels).last_hidden_state  # (B·T, [cls/registers +] patches, C)
        if hidden.dim() == 4:                                       # a convolutional model's (B·T, C, h, w)
            grid = hidden
        else:
            side = int((hidden.shape[1]) ** 0.5)
            patches = hidden[:, hidden.shape[1] - side * side:]     # the class (and register) tokens dropped
            grid = patches.transpose(1, 2).reshape(hidden.shape[0], -1, side, side)
        pooled = F.adaptive_avg_pool2d(grid, cfg.pool).flatten(2)          # (B·T, C, pool²)
        pooled = pooled.view(batch, num_frames // cfg.group, cfg.group, -1, cfg.pool ** 2).mean(2)
        return pooled.transpose(2, 3).flatten(1, 2)                        # (B, groups·pool², C)


def _vision_model(config: HFFramesConfig):
    if config.hf_config["model_type"] == "xclip":  # transformers' Auto classes do not map its vision tower
        from transformers import XCLIPVisionModel

        return XCLIPVisionModel(config.vision())
    from transformers import AutoModel

    vision = config.vision()
    if config.hf_config["model_type"] == TIMM_TYPE and vision.model_args:  # the wrapper sets num_classes itself
        vision.model_args = {k: v for k, v in vision.model_args.items() if k != "num_classes"}
    return AutoModel.from_config(vision)


# ----------------------------------------------------------------------------------------------------- weights
def load_encoder_weights(module: _HFEncoder, path: str) -> list[str]:
    """The encoder's weights from its folder (safetensors only, read by transformers, which resolves renamed
    tensors), found under whatever prefix the folder's model keeps them (a CLIP folder's vision tower, a Whisper
    folder's encoder); every tensor of the part must be there. A timm folder's tensors are timm's own names, read
    as they are (transformers' loader rebuilds the model from its ``model_args``, which may repeat arguments the
    wrapper sets)."""
    from transformers import AutoModel

    folder = check_model_folder(path, "encoder")
    if module.config.hf_config["model_type"] == TIMM_TYPE:
        from safetensors.torch import load_file

        source = {f"timm_model.{k}": v for file in safetensors_files(folder) for k, v in load_file(str(file)).items()}
    else:
        source = read_folder_state(folder, AutoModel, module.config.trust_remote_code)
    target = module.model.state_dict()
    prefix = _common_prefix(source, target)
    if prefix is None:
        raise ValueError(f"{folder}: its weights do not hold this encoder's (e.g. no {next(iter(target))})")
    module.model.load_state_dict({name: source[prefix + name] for name in target}, strict=True)
    return []


def _common_prefix(source: dict, target: dict) -> str | None:
    first = next(iter(target))
    for candidate in sorted({name[:len(name) - len(first)] for name in source if name.endswith(first)}, key=len):
        if all(candidate + name in source for name in target):
            return candidate
    return None
