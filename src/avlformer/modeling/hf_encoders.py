"""Encoders from ``transformers`` as parts (docs/models.md): ``hf_video`` (a video model: VideoMAE, TimeSformer,
ViViT), ``hf_frames`` (an image model's vision tower applied to each frame: CLIP, SigLIP, DINOv2, ...) and
``hf_audio`` (AST, Whisper's encoder).

Each part's preprocessing is its folder's: the image mean/std of its ``preprocessor_config.json`` (frames arrive
normalised with ImageNet's, ``data/transforms.py``, and are re-normalised with the model's), and for audio its
feature extractor (sample rate, mel settings, normalisation), fed the prepared clip resampled from the data's rate
(32 kHz) to the extractor's. Both are stored in the part's config, hence in every checkpoint's ``config.json``, so
``infer``/``caption``/``serve`` give the model what it was trained on without the original folder.

``hf_frames`` reduces time in a stated way: each frame's patch tokens (class token dropped) are average-pooled to
``pool`` x ``pool`` tokens, then each group of ``group`` consecutive frames is averaged: ``num_frames / group ·
pool²`` tokens.
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
from avlformer.modeling.hf_folder import (check_model_folder, config_object, cpu_build, read_folder_state,
                                          read_model_config, set_hf_checkpointing)

VIDEO_TYPES = ("videomae", "timesformer", "vivit")
AUDIO_TYPES = ("audio-spectrogram-transformer", "whisper")
IMAGE_KINDS = ("clip", "siglip", "dinov2", "vit", "clip_vision_model", "siglip_vision_model")
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
@dataclass
class HFVideoConfig(_HFEncoderConfig):
    image_mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    WHAT, KINDS = "video encoder", VIDEO_TYPES

    @classmethod
    def from_folder(cls, path: str, **values):
        """The config of the model in ``path``: its config.json and processor config (mean/std) are read."""
        folder = check_model_folder(path, cls.WHAT)
        hf_config = read_model_config(folder, cls.WHAT)
        if hf_config["model_type"] not in cls.KINDS:
            raise _kind_error(folder, hf_config, f"a {cls.WHAT}", cls.KINDS)
        pre = _preprocessor(folder, cls.WHAT)
        return cls(hf_config=hf_config, path=str(folder), image_mean=list(pre.get("image_mean", IMAGENET_MEAN)),
                   image_std=list(pre.get("image_std", IMAGENET_STD)), **values)

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


def _renormalise(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """ImageNet-normalised frames (B, T, 3, H, W) -> normalised with the model's own ``mean``/``std``."""
    shape = (1, 1, 3, 1, 1)
    given_mean, given_std = (frames.new_tensor(v).view(shape) for v in (IMAGENET_MEAN, IMAGENET_STD))
    mean, std = frames.new_tensor(mean).view(shape), frames.new_tensor(std).view(shape)
    return (frames * given_std + given_mean - mean) / std


class _HFEncoder(nn.Module):
    """Holds ``self.model``, built on the CPU even inside build_on_meta (hf_folder.cpu_build)."""

    def __init__(self, config, build):
        """``build()`` returns the Hugging Face model for ``config``."""
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

        super().__init__(config, lambda: AutoModel.from_config(config.hf()))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = _renormalise(frames, self.config.image_mean, self.config.image_std)
        return self.model(pixel_values=pixels).last_hidden_state


# ----------------------------------------------------------------------------------------------------- frames
@dataclass
class HFFramesConfig(HFVideoConfig):
    pool: int = 2   # each frame's patch grid is average-pooled to pool x pool tokens
    group: int = 2  # then each run of `group` frames is averaged

    WHAT, KINDS = "per-frame image encoder", IMAGE_KINDS

    def vision(self):
        """The vision tower's config (a CLIP/SigLIP folder holds text and vision towers)."""
        hf = self.hf()
        return getattr(hf, "vision_config", None) or hf

    @property
    def token_width(self) -> int:
        return int(self.vision().hidden_size)

    def num_tokens(self, num_frames: int, image_size: int) -> int:
        return num_frames // self.group * self.pool ** 2

    def check_fits(self, model_config) -> None:
        if model_config.num_frames % self.group:
            raise ValueError(f"video.group {self.group} does not divide num_frames {model_config.num_frames}")
        size = self.vision().image_size
        if size != model_config.image_size:
            raise ValueError(f"the image encoder takes {size} px frames, the model gives {model_config.image_size}")

    def describe(self) -> str:
        return f"{super().describe()} per frame, {self.pool}x{self.pool} tokens per {self.group} frames"


class HFFramesEncoder(_HFEncoder):
    def __init__(self, config: HFFramesConfig):
        from transformers import AutoModel

        super().__init__(config, lambda: AutoModel.from_config(config.vision()))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        batch, num_frames = frames.shape[:2]
        pixels = _renormalise(frames, cfg.image_mean, cfg.image_std).flatten(0, 1)
        hidden = self.model(pixel_values=pixels).last_hidden_state          # (B·T, [cls +] patches, C)
        side = int((hidden.shape[1]) ** 0.5)
        patches = hidden[:, hidden.shape[1] - side * side:]                 # the class token, if any, dropped
        grid = patches.transpose(1, 2).reshape(hidden.shape[0], -1, side, side)
        pooled = F.adaptive_avg_pool2d(grid, cfg.pool).flatten(2)          # (B·T, C, pool²)
        pooled = pooled.view(batch, num_frames // cfg.group, cfg.group, -1, cfg.pool ** 2).mean(2)
        return pooled.transpose(2, 3).flatten(1, 2)                        # (B, groups·pool², C)


# ----------------------------------------------------------------------------------------------------- audio
@dataclass
class HFAudioConfig(_HFEncoderConfig):
    feature_extractor: dict = field(default_factory=dict)  # the folder's preprocessor_config.json
    sample_rate: int = 32000     # the data's rate (what the loaders read); resampled to the extractor's
    clip_seconds: float = 10.0

    @classmethod
    def from_folder(cls, path: str, **values) -> "HFAudioConfig":
        folder = check_model_folder(path, "audio encoder")
        hf_config = read_model_config(folder, "audio encoder")
        if hf_config["model_type"] not in AUDIO_TYPES:
            raise _kind_error(folder, hf_config, "an audio encoder", AUDIO_TYPES)
        return cls(hf_config=hf_config, path=str(folder), feature_extractor=_preprocessor(folder, "audio encoder"),
                   **values)

    @property
    def model_sample_rate(self) -> int:
        return int(self.feature_extractor.get("sampling_rate", 16000))

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def token_width(self) -> int:
        return int(self.hf_config.get("hidden_size") or self.hf_config["d_model"])

    @property
    def num_tokens(self) -> int:
        hf = self.hf_config
        if hf["model_type"] == "whisper":
            return int(hf["max_source_positions"])
        freq = (hf["num_mel_bins"] - hf.get("patch_size", 16)) // hf["frequency_stride"] + 1
        time = (hf["max_length"] - hf.get("patch_size", 16)) // hf["time_stride"] + 1
        return freq * time + 2


class HFAudioEncoder(_HFEncoder):
    def __init__(self, config: HFAudioConfig):
        super().__init__(config, lambda: _audio_model(config.hf()))

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, 1, S) at the data's rate -> the model's input features, by its own feature extractor."""
        import torchaudio.functional as AF

        cfg = self.config
        wave = audio[:, 0].float()
        if cfg.sample_rate != cfg.model_sample_rate:
            wave = AF.resample(wave, cfg.sample_rate, cfg.model_sample_rate)
        extractor = _extractor(cfg)
        out = extractor([row.cpu().numpy() for row in wave], sampling_rate=cfg.model_sample_rate,
                        return_tensors="pt")
        name = "input_features" if "input_features" in out else "input_values"
        return out[name].to(audio.device)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        features = self.features(audio).to(next(self.model.parameters()).dtype)
        if self.config.hf_config["model_type"] == "whisper":
            return self.model(input_features=features).last_hidden_state
        return self.model(input_values=features).last_hidden_state


def _audio_model(hf_config):
    if hf_config.model_type == "whisper":
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(hf_config)
    from transformers import AutoModel

    return AutoModel.from_config(hf_config)


_EXTRACTORS: dict[str, Any] = {}


def _extractor(config: HFAudioConfig):
    import json

    from transformers.models.auto.feature_extraction_auto import feature_extractor_class_from_name

    key = json.dumps(config.feature_extractor, sort_keys=True)
    if key not in _EXTRACTORS:
        values = dict(config.feature_extractor)
        cls = feature_extractor_class_from_name(values.pop("feature_extractor_type", ""))
        if cls is None:
            raise ValueError(f"{config.path}: the preprocessor config names no known feature extractor")
        _EXTRACTORS[key] = cls(**values)
    return _EXTRACTORS[key]


# ----------------------------------------------------------------------------------------------------- weights
def load_encoder_weights(module: _HFEncoder, path: str) -> list[str]:
    """The encoder's weights from its folder (safetensors only, read by transformers, which resolves renamed
    tensors), found under whatever prefix the folder's model keeps them (a CLIP folder's vision tower, a Whisper
    folder's encoder); every tensor of the part must be there."""
    from transformers import AutoModel

    folder = check_model_folder(path, "encoder")
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
