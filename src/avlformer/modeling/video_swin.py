"""Video Swin Transformer 3-D encoder (docs/upstream.md §3.2), the visual backbone of AVLFormer, built from
torchvision's Video Swin pieces with upstream's state-dict names (``backbone.*``). Inputs are zero-padded as
upstream pads them (``VideoSwinConfig.token_grid``); official checkpoints convert by :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Collection, Mapping, Sequence

import torch
from torch import Tensor, nn
from timm.layers import Mlp
from torch.utils.checkpoint import checkpoint
from torchvision.models.swin_transformer import PatchMerging
from torchvision.models.video.swin_transformer import PatchEmbed3d
from torchvision.ops import StochasticDepth
from avlformer.config_fields import JsonDataclass
from avlformer.modeling.meta_device import build_on_meta, check_state_dict, state_shapes
from avlformer.modeling.swin_window_attention import WindowAttention3d, relative_position_index
from avlformer.modeling.weights_file import load_converted

LAYER_NORM_EPS = 1e-5
CLS_HEAD_PREFIX = "cls_head."
INDEX_SUFFIX = ".attn.relative_position_index"
TABLE_SUFFIX = ".attn.relative_position_bias_table"


def _int_tuple(values: Sequence[int], name: str, length: int | None = None) -> tuple[int, ...]:
    result = tuple(int(v) for v in values)
    if length is not None and len(result) != length:
        raise ValueError(f"VideoSwinConfig.{name} must have {length} entries, got {list(result)}")
    if any(v <= 0 for v in result):
        raise ValueError(f"VideoSwinConfig.{name} entries must be positive, got {list(result)}")
    return result


@dataclass
class VideoSwinConfig(JsonDataclass):
    """Shape of a Video Swin encoder. ``patch_size`` and ``window_size`` are (time, height, width)."""

    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("drop_path_rate", "use_checkpoint", "checkpoint_stages")
    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    patch_size: Sequence[int] = (2, 4, 4)
    window_size: Sequence[int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    use_checkpoint: bool = False
    # The stages whose blocks use_checkpoint recomputes: stages 1-2 hold the most activation memory per FLOP
    # (docs/training.md); (0, 1, 2, 3) for the least memory.
    checkpoint_stages: Sequence[int] = (0, 1)
    attn_implementation: str = "sdpa"  # modeling/attention.py

    def __post_init__(self) -> None:
        self.depths = _int_tuple(self.depths, "depths")
        self.num_heads = _int_tuple(self.num_heads, "num_heads")
        self.patch_size = _int_tuple(self.patch_size, "patch_size", 3)
        self.window_size = _int_tuple(self.window_size, "window_size", 3)
        self.checkpoint_stages = tuple(int(stage) for stage in self.checkpoint_stages)
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(
                f"VideoSwinConfig: depths {list(self.depths)} and num_heads {list(self.num_heads)} "
                "must be non-empty and of equal length (one entry per stage)"
            )
        for stage, heads in enumerate(self.num_heads):
            dim = self.stage_dim(stage)
            if dim % heads:
                raise ValueError(f"VideoSwinConfig: stage {stage} width {dim} is not divisible by {heads} heads")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"VideoSwinConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"VideoSwinConfig.mlp_ratio must be positive, got {self.mlp_ratio}")
        if any(not 0 <= stage < len(self.depths) for stage in self.checkpoint_stages):
            raise ValueError(f"VideoSwinConfig.checkpoint_stages must be stage indices 0..{len(self.depths) - 1}, "
                             f"got {list(self.checkpoint_stages)}")

    @classmethod
    def nano(cls, **overrides: Any) -> "VideoSwinConfig":
        """Test-sized: four one-block stages, milliseconds on CPU."""
        return cls(**{"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "VideoSwinConfig":
        return cls(**{"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> "VideoSwinConfig":
        return cls(**{"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24), **overrides})

    @classmethod
    def base(cls, **overrides: Any) -> "VideoSwinConfig":
        """Swin-B of the paper (Kinetics-600 22k checkpoint)."""
        return cls(**{"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), **overrides})

    def stage_dim(self, stage: int) -> int:
        return self.embed_dim * 2**stage

    @property
    def token_width(self) -> int:
        return self.stage_dim(len(self.depths) - 1)

    def check_fits(self, model_config) -> None:
        self.token_grid(model_config.num_frames, model_config.image_size)

    def describe(self) -> str:
        shape = (self.embed_dim, self.depths, self.num_heads)
        for suffix, preset in (("T", self.tiny), ("S", self.small), ("B", self.base), ("nano", self.nano)):
            reference = preset()
            if shape == (reference.embed_dim, reference.depths, reference.num_heads):
                return f"Swin-{suffix}"
        return f"Swin ({self.embed_dim}-dim, depths {list(self.depths)})"

    def token_grid(self, num_frames: int, image_size: int | Sequence[int]) -> tuple[int, int, int]:
        """(T', H', W') of the output tokens: ceil(T / patch_t); per side ceil(size / patch), then ceil(/2) at
        each patch merging."""
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(num_frames, height, width) <= 0:
            raise ValueError(f"Video Swin needs at least one frame and one pixel; got T={num_frames}, "
                             f"H={height}, W={width}")
        grid_h, grid_w = -(-height // self.patch_size[1]), -(-width // self.patch_size[2])
        for _ in range(len(self.depths) - 1):
            grid_h, grid_w = -(-grid_h // 2), -(-grid_w // 2)
        return -(-num_frames // self.patch_size[0]), grid_h, grid_w

    def num_tokens(self, num_frames: int, image_size: int | Sequence[int]) -> int:
        """Grid tokens T'·H'·W' (see :meth:`token_grid`); 16·7·7 = 784 for 32 frames at 224."""
        grid_t, grid_h, grid_w = self.token_grid(num_frames, image_size)
        return grid_t * grid_h * grid_w

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("depths", "num_heads", "patch_size", "window_size", "checkpoint_stages"):
            data[key] = list(data[key])
        return data


class _SwinBlock3d(nn.Module):
    """torchvision's SwinTransformerBlock with upstream's MLP names; (B, T, H, W, C) in and out."""

    def __init__(self, dim: int, heads: int, window: Sequence[int], shifted: bool, mlp_ratio: float, drop: float,
                 attn_implementation: str = "sdpa"):
        super().__init__()
        shift = [w // 2 for w in window] if shifted else [0, 0, 0]
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = WindowAttention3d(dim, list(window), shift, heads, attn_implementation=attn_implementation)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        # timm's MLP has upstream's names (mlp.fc1 / mlp.fc2; torchvision's are mlp.0 / mlp.3) and erf GELU.
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = StochasticDepth(drop, "row")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _SwinStage(nn.Module):
    """Upstream's BasicLayer: the blocks of one stage, then (except in the last stage) 2x2 patch merging."""

    def __init__(self, config: VideoSwinConfig, stage: int, drop_rates: Sequence[float]) -> None:
        super().__init__()
        dim, heads = config.stage_dim(stage), config.num_heads[stage]
        self.blocks = nn.ModuleList(
            _SwinBlock3d(dim, heads, config.window_size, index % 2 == 1, config.mlp_ratio, rate,
                         config.attn_implementation)
            for index, rate in enumerate(drop_rates)
        )
        self.downsample = None if stage == len(config.depths) - 1 else PatchMerging(dim, norm_layer=nn.LayerNorm)

    def forward(self, x: Tensor, use_checkpoint: bool = False) -> Tensor:
        # Per block, not per stage: the same recomputation, but the peak holds one block's attention.
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        return x if self.downsample is None else self.downsample(x)


class _VideoSwinBackbone(nn.Module):
    """Upstream's SwinTransformer3D without classifier: (B, 3, T, H, W) -> (B, T', H', W', C) channels-last."""

    def __init__(self, config: VideoSwinConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3d(list(config.patch_size), 3, config.embed_dim, norm_layer=nn.LayerNorm)
        # Stochastic depth grows linearly from 0 to drop_path_rate over all blocks (torch.linspace as upstream).
        rates = torch.linspace(0.0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        starts = [sum(config.depths[:stage]) for stage in range(len(config.depths))]
        self.layers = nn.ModuleList(
            _SwinStage(config, stage, rates[start : start + depth])
            for stage, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.norm = nn.LayerNorm(config.token_width, eps=LAYER_NORM_EPS)
        self.apply(_init_upstream)

    def forward(self, video: Tensor, checkpoint_stages: Collection[int] = ()) -> Tensor:
        x = self.patch_embed(video)
        for index, stage in enumerate(self.layers):
            x = stage(x, index in checkpoint_stages)
        return self.norm(x)


def _init_upstream(module: nn.Module) -> None:
    # Upstream's _init_weights: truncated normal(0.02) Linear weights, zero biases, unit LayerNorms.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VideoSwinEncoder(nn.Module):
    """Frames (B, T, 3, H, W) -> grid tokens (B, T'·H'·W', token_width), token index d·H'·W' + h·W' + w."""

    def __init__(self, config: VideoSwinConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _VideoSwinBackbone(config)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.config.use_checkpoint = enabled

    def forward(self, frames: Tensor) -> Tensor:
        self._check_frames(frames)
        video = frames.permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W) for the Conv3d stem
        recompute = self.config.use_checkpoint and self.training
        grid = self.backbone(video, self.config.checkpoint_stages if recompute else ())
        return grid.flatten(1, 3)

    def _check_frames(self, frames: Tensor) -> None:
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"VideoSwinEncoder expects frames (B, T, 3, H, W), got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"VideoSwinEncoder expects float frames, got dtype {frames.dtype}")
        _, num_frames, _, height, width = frames.shape
        try:
            self.config.token_grid(num_frames, (height, width))
        except ValueError as error:
            raise ValueError(f"VideoSwinEncoder: frames of shape {tuple(frames.shape)}: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoint conversion


def _check_index_buffer(key: str, value: Any, reference: Tensor) -> None:
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(reference.shape):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{key}: shape {got}, expected {tuple(reference.shape)} for this window size")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise ValueError(f"{key}: dtype {value.dtype}, expected an integer index tensor")
    mismatches = int((value.to(torch.int64) != reference).sum())
    if mismatches:
        raise ValueError(
            f"{key}: differs from the recomputed relative position index in {mismatches} entries; "
            "the checkpoint was made for another window layout or is corrupted"
        )


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], config: VideoSwinConfig
) -> tuple[dict[str, Tensor], list[str]]:
    """Official Video Swin checkpoint -> (VideoSwinEncoder state dict, dropped keys); a mismatch raises
    CheckpointMismatchError listing every offending key."""
    source = state_dict.get("state_dict", state_dict)  # the mmaction .pth: {'meta': ..., 'state_dict': {...}}
    if not isinstance(source, Mapping):
        raise ValueError(f"Video Swin checkpoint: 'state_dict' is a {type(source).__name__}, not a mapping")
    expected = state_shapes(build_on_meta(lambda: VideoSwinEncoder(config)))
    reference_index = relative_position_index(config.window_size)
    converted: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in source.items():
        if key.startswith(CLS_HEAD_PREFIX):
            dropped.append(key)
        elif key.endswith(INDEX_SUFFIX) and key[: -len(INDEX_SUFFIX)] + TABLE_SUFFIX in expected:
            _check_index_buffer(key, value, reference_index)
            dropped.append(key)
        else:
            converted[key] = value
    check_state_dict(converted, expected, what="Video Swin checkpoint")
    return converted, dropped


def load_official_weights(encoder: VideoSwinEncoder, path: str | Path) -> list[str]:
    """Load the official Kinetics .pth (or any dict in that layout) into ``encoder``; returns the dropped keys."""
    return load_converted(encoder, path, "Video Swin checkpoint", checkpoint_filter_fn, encoder.config)