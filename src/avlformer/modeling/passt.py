"""PaSST audio encoder: mel front-end, PaSST-S transformer with structured patchout, projection; parameter
names, patchout (random in training, evenly spaced in evaluation) and token order as docs/upstream.md §3.3 states.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar, Mapping

import torch
import torch.nn.functional as F
import torchaudio
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchaudio.compliance.kaldi import get_mel_banks
from avlformer.config_fields import JsonDataclass
from avlformer.modeling.meta_device import build_on_meta, check_state_dict, state_shapes
from avlformer.modeling.weights_file import load_converted
from avlformer.data.recipe import CLIP_SECONDS, SAMPLE_RATE

DROPPED_PREFIXES = ("head.0.", "head.1.", "head_dist.")
_PREEMPHASIS = 0.97
_LOG_OFFSET = 1e-5


@dataclass
class PasstConfig(JsonDataclass):
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("freqm", "timem", "fmin_aug_range", "fmax_aug_range",
                                                "use_checkpoint", "out_dim")
    sample_rate: int = SAMPLE_RATE
    clip_seconds: float = CLIP_SECONDS
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    fmin: float = 0.0
    fmax: float = 15000.0  # upstream passes None, which resolves to sr//2 - fmax_aug_range//2
    fmin_aug_range: int = 10
    fmax_aug_range: int = 2000
    freqm: int = 48
    timem: int = 192
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    input_tdim: int = 998
    s_patchout_t: int = 40
    s_patchout_f: int = 4
    out_dim: int = 512
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.win_length > self.n_fft:
            problems.append(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.fmin < 0 or self.fmax + self.fmax_aug_range // 2 > self.sample_rate / 2:
            problems.append(f"mel band [{self.fmin}, {self.fmax}] (+{self.fmax_aug_range // 2} augmentation) "
                            f"must lie within [0, {self.sample_rate / 2}] Hz")
        if min(self.n_mels, self.input_tdim, self.num_mel_frames) < self.patch_size:
            problems.append(f"spectrogram smaller than one {self.patch_size}x{self.patch_size} patch")
        else:
            clip_t = _conv_out(self.num_mel_frames, self.patch_size, self.tstride)
            if clip_t != self.grid[1]:
                problems.append(f"a {self.clip_seconds} s clip gives {self.num_mel_frames} mel frames = {clip_t} "
                                f"time patches, but input_tdim {self.input_tdim} gives {self.grid[1]}")
            grid_f, grid_t = self.grid
            if not (0 <= self.s_patchout_f < grid_f and 0 <= self.s_patchout_t < grid_t):
                problems.append(f"patchout ({self.s_patchout_f}, {self.s_patchout_t}) must leave at least one "
                                f"row and column of the {grid_f}x{grid_t} grid")
        if problems:
            raise ValueError("invalid PasstConfig: " + "; ".join(problems))

    @classmethod
    def paper(cls) -> "PasstConfig":
        """PaSST-S as used by AVLFormer: 10 s at 32 kHz, 128 mel bands, ViT-Base, 473 tokens."""
        return cls()

    @classmethod
    def nano(cls) -> "PasstConfig":
        """A tiny model for tests: same code paths, 1 s clips, 4x9 patch grid, 19 tokens."""
        return cls(clip_seconds=1.0, n_mels=48, freqm=8, timem=20, embed_dim=32, depth=2, num_heads=2,
                   input_tdim=100, s_patchout_t=3, s_patchout_f=1, out_dim=32)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def num_mel_frames(self) -> int:
        # Pre-emphasis drops one sample; the centred STFT then gives 1 + len // hop frames.
        return 1 + (self.clip_samples - 1) // self.hop_length

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency, time) patches of the positional grid, which a clip's spectrogram fills exactly."""
        return (_conv_out(self.n_mels, self.patch_size, self.fstride),
                _conv_out(self.input_tdim, self.patch_size, self.tstride))

    @property
    def kept_grid(self) -> tuple[int, int]:
        """(frequency, time) patches left after structured patchout."""
        grid_f, grid_t = self.grid
        return grid_f - self.s_patchout_f, grid_t - self.s_patchout_t

    @property
    def num_tokens(self) -> int:
        """Tokens returned with patchout on: distillation token + kept patches (473 for the paper)."""
        kept_f, kept_t = self.kept_grid
        return 1 + kept_f * kept_t

    @property
    def token_width(self) -> int:
        """Width of the encoder's tokens, before its projection to ``out_dim``."""
        return self.embed_dim

    def check_fits(self, model_config) -> None:
        if self.out_dim != model_config.img_feature_dim:
            raise ValueError(f"audio.out_dim {self.out_dim} != img_feature_dim {model_config.img_feature_dim}")

    def describe(self) -> str:
        for name, preset in (("PaSST-S", self.paper), ("PaSST-nano", self.nano)):
            reference = preset()
            if (self.embed_dim, self.depth, self.num_heads) == (reference.embed_dim, reference.depth,
                                                                reference.num_heads):
                return name
        return f"PaSST ({self.embed_dim}-dim, {self.depth} blocks)"


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free SimpleRMSNorm of upstream: x / (||x||_2 * d^-1/2 + eps) over the last dimension."""
    return x / (x.norm(dim=-1, keepdim=True) * x.shape[-1] ** -0.5 + eps)


def evenly_spaced_indices(total: int, keep: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The deterministic eval patchout rule: the centre of each of `keep` equal bins over `total` positions."""
    if not 0 < keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} positions")
    bins = torch.arange(keep, device=device)
    return torch.div((2 * bins + 1) * total, 2 * keep, rounding_mode="floor")


def random_sorted_indices(total: int, keep: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The training patchout rule: a sorted random subset of `keep` of `total` positions."""
    return torch.randperm(total, device=device)[:keep].sort().values


class MelFrontEnd(nn.Module):
    """Waveform -> normalised log-mel spectrogram in float32, as PaSST's AugmentMelSTFT (docs/upstream.md §3.3).
    Training jitters the mel band edges (once per batch) and masks one frequency band and time span per example."""

    def __init__(self, config: PasstConfig):
        super().__init__()
        self.config = config
        for name, value in self.computed_buffers().items():
            self.register_buffer(name, value, persistent=False)
        # iid masks on a 4-D (B, 1, F, T) input draw an independent band per example.
        self.frequency_masking = torchaudio.transforms.FrequencyMasking(config.freqm, iid_masks=True)
        self.time_masking = torchaudio.transforms.TimeMasking(config.timem, iid_masks=True)

    def computed_buffers(self) -> dict[str, torch.Tensor]:
        """The buffers no state dict holds, recomputed after a meta-device load (modeling/meta_device.py)."""
        return {"window": torch.hann_window(self.config.win_length, periodic=False),
                "preemphasis": torch.tensor([[[-_PREEMPHASIS, 1.0]]]),
                "eval_filters": self._mel_filters(self.config.fmin, self.config.fmax)}

    def _mel_filters(self, fmin: float, fmax: float) -> torch.Tensor:
        cfg = self.config
        filters, _ = get_mel_banks(cfg.n_mels, cfg.n_fft, float(cfg.sample_rate), float(fmin), float(fmax),
                                   vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0)
        # Kaldi banks cover n_fft/2 bins; the Nyquist bin of the one-sided STFT gets weight 0.
        return F.pad(filters, (0, 1))

    def _training_filters(self, device: torch.device) -> torch.Tensor:
        cfg = self.config
        fmin = cfg.fmin + torch.randint(cfg.fmin_aug_range, (1,)).item()
        fmax = cfg.fmax + cfg.fmax_aug_range // 2 - torch.randint(cfg.fmax_aug_range, (1,)).item()
        return self._mel_filters(fmin, fmax).to(device)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 1, S) or (B, S) audio (shape checked by PasstAudioEncoder) -> (B, 1, n_mels, frames)."""
        cfg = self.config
        with torch.autocast(device_type=audio.device.type, enabled=False):
            waveform = audio.reshape(audio.shape[0], -1).float()
            emphasised = F.conv1d(waveform.unsqueeze(1), self.preemphasis).squeeze(1)
            spectrum = torch.stft(emphasised, cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                                  window=self.window, center=True, normalized=False, onesided=True,
                                  return_complex=True)
            power = torch.view_as_real(spectrum).square().sum(dim=-1)
            filters = self._training_filters(waveform.device) if self.training else self.eval_filters
            log_mel = (filters @ power + _LOG_OFFSET).log()
            if self.training:
                log_mel = self.time_masking(self.frequency_masking(log_mel.unsqueeze(1))).squeeze(1)
            return ((log_mel + 4.5) / 5.0).unsqueeze(1)


class PasstNet(nn.Module):
    """PaSST-S transformer without its heads: ``(B, 1, n_mels, frames) -> (B, tokens, embed_dim)``."""

    def __init__(self, config: PasstConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        grid_f, grid_t = config.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.new_pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        self.freq_new_pos_embed = nn.Parameter(torch.zeros(1, dim, grid_f, 1))
        self.time_new_pos_embed = nn.Parameter(torch.zeros(1, dim, 1, grid_t))
        # Overlapping patches, no norm; the container keeps PaSST's name, patch_embed.proj.
        self.patch_embed = nn.ModuleDict({"proj": nn.Conv2d(1, dim, kernel_size=config.patch_size,
                                                            stride=(config.fstride, config.tstride))})
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(config.depth))
        self.norm = norm_layer(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for parameter in (self.cls_token, self.dist_token, self.new_pos_embed, self.freq_new_pos_embed,
                          self.time_new_pos_embed):
            nn.init.trunc_normal_(parameter, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def patchout_indices(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(frequency rows, time columns) to keep: random in training, the evenly spaced rule in eval."""
        select = random_sorted_indices if self.training else evenly_spaced_indices
        (grid_f, grid_t), (kept_f, kept_t) = self.config.grid, self.config.kept_grid
        # Time first, as upstream, so a seeded run draws in the same order.
        time_idx = select(grid_t, kept_t, device)
        freq_idx = select(grid_f, kept_f, device)
        return freq_idx, time_idx

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed["proj"](spectrogram)
        if tuple(patches.shape[-2:]) != self.config.grid:
            raise ValueError(f"PasstNet: spectrogram {tuple(spectrogram.shape)} gives a patch grid "
                             f"{tuple(patches.shape[-2:])}, expected {self.config.grid}")
        patches = patches + self.time_new_pos_embed + self.freq_new_pos_embed
        freq_idx, time_idx = self.patchout_indices(patches.device)
        patches = patches[:, :, :, time_idx][:, :, freq_idx, :]
        tokens = patches.flatten(2).transpose(1, 2)
        batch = tokens.shape[0]
        cls = (self.cls_token + self.new_pos_embed[:, :1]).expand(batch, -1, -1)
        dist = (self.dist_token + self.new_pos_embed[:, 1:]).expand(batch, -1, -1)
        tokens = torch.cat([cls, dist, tokens], dim=1)
        recompute = self.config.use_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpoint(block, tokens, use_reentrant=False) if recompute else block(tokens)
        # Drop the cls token: AVLFormer uses the distillation token and the patches (docs/upstream.md §3.3).
        return self.norm(tokens)[:, 1:]


class PasstAudioEncoder(nn.Module):
    """Waveform (B, 1, clip_samples) -> tokens (B, num_tokens, embed_dim); ``projection`` (``linear``, kept here
    where the released weights hold it) maps them to ``out_dim``. AVLFormer's audio part."""

    def __init__(self, config: PasstConfig):
        super().__init__()
        self.config = config
        self.mel = MelFrontEnd(config)
        self.net = PasstNet(config)
        self.linear = nn.Linear(config.embed_dim, config.out_dim)

    @property
    def projection(self) -> nn.Linear:
        return self.linear

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.config.use_checkpoint = enabled

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        self._check_audio(audio)
        return self.net(self.mel(audio))

    def _check_audio(self, audio: torch.Tensor) -> None:
        expected = self.config.clip_samples
        if audio.dim() not in (2, 3) or (audio.dim() == 3 and audio.shape[1] != 1):
            raise ValueError(f"PasstAudioEncoder expects audio of shape (B, 1, {expected}), "
                             f"got {tuple(audio.shape)}")
        if audio.shape[-1] != expected:
            raise ValueError(f"PasstAudioEncoder expects {expected} samples per clip "
                             f"({self.config.clip_seconds} s at {self.config.sample_rate} Hz), "
                             f"got {audio.shape[-1]}")


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor],
                         config: PasstConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official PaSST state dict (every key `net.`-prefixed or none) -> (PasstNet state dict, dropped head keys);
    a mismatch raises CheckpointMismatchError listing every offending key."""
    expected = state_shapes(build_on_meta(lambda: PasstNet(config)))
    prefix = "net." if any(key.startswith("net.") for key in state_dict) else ""
    dropped = [key for key in state_dict if key.removeprefix(prefix).startswith(DROPPED_PREFIXES)]
    kept = {key: value for key, value in state_dict.items() if key not in dropped}
    check_state_dict(kept, {prefix + name: shape for name, shape in expected.items()}, what="PaSST checkpoint")
    return {key.removeprefix(prefix): value for key, value in kept.items()}, dropped


def load_official_weights(encoder: PasstAudioEncoder, path: str | Path) -> list[str]:
    """Load the official PaSST .pt into `encoder.net`; returns the dropped (head) keys."""
    return load_converted(encoder.net, path, "PaSST checkpoint", checkpoint_filter_fn, encoder.config)