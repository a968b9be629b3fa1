"""Video Swin's 3-D (shifted) window attention and its relative position index (docs/upstream.md §3.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.video.swin_transformer import (
    ShiftedWindowAttention3d,
    _compute_attention_mask_3d,
    _compute_pad_size_3d,
    _get_window_and_shift_size,
)
from avlformer.modeling.attention import attention, check_implementation


def relative_position_index(window_size: Sequence[int]) -> Tensor:
    """int64 (V, V), V = Wd·Wh·Ww: row of the bias table for the offset between window tokens i and j ('ij'
    meshgrid order, offsets in mixed radix: the formula of upstream's checkpoint buffers)."""
    wd, wh, ww = (int(w) for w in window_size)
    grid = torch.meshgrid(*(torch.arange(w) for w in (wd, wh, ww)), indexing="ij")
    coords = torch.stack(grid).flatten(1)  # (3, V)
    offsets = coords[:, :, None] - coords[:, None, :]  # (3, V, V): position of i minus position of j
    shift = torch.tensor([wd - 1, wh - 1, ww - 1]).view(3, 1, 1)
    radix = torch.tensor([(2 * wh - 1) * (2 * ww - 1), 2 * ww - 1, 1]).view(3, 1, 1)
    return ((offsets + shift) * radix).sum(0)


class WindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's shifted-window attention, same math (``super().forward`` is the reference tests compare with),
    with the model's kernel and a recomputed (non-persistent) ``relative_position_index``; shifted blocks use
    :class:`ShiftedWindows` (docs/training.md, "Swin's shifted windows")."""

    def __init__(self, *args, attn_implementation: str = "sdpa", **kwargs):
        super().__init__(*args, **kwargs)
        check_implementation(attn_implementation)
        self.attn_implementation = attn_implementation

    def define_relative_position_index(self) -> None:
        for name, value in self.computed_buffers().items():
            self.register_buffer(name, value, persistent=False)

    def computed_buffers(self) -> dict[str, Tensor]:
        return {"relative_position_index": relative_position_index(self.window_size)}

    def get_relative_position_bias(self, window_size: list[int]) -> Tensor:
        """(1, heads, V, V) bias for a (possibly clamped) window: torchvision's values, in one gather."""
        volume = window_size[0] * window_size[1] * window_size[2]
        index = self.relative_position_index[:volume, :volume].flatten()
        return self.relative_position_bias_table.t().index_select(1, index).view(1, -1, volume, volume)

    def forward(self, x: Tensor) -> Tensor:
        _, t, h, w, _ = x.shape
        window, shift = _get_window_and_shift_size(self.shift_size.copy(), [t, h, w], self.window_size.copy())
        pad = _compute_pad_size_3d((t, h, w), (window[0], window[1], window[2]))
        if any(pad):  # F.pad copies even when it pads nothing (the paper's sizes tile exactly)
            x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        bias = self.get_relative_position_bias(window)  # (1, heads, V, V)
        if not any(shift):
            out = self._attend(split_windows(x, window), bias, None)
            return merge_windows(out, x.shape, window)[:, :t, :h, :w].contiguous()
        layout = self._shifted_windows(x, window, shift)
        volume = window[0] * window[1] * window[2]
        out = self._attend(x.flatten(1, 3).index_select(1, layout.gather).unflatten(1, (-1, volume)), bias, layout)
        return out.flatten(1, 2).index_select(1, layout.scatter).view(x.shape)[:, :t, :h, :w].contiguous()

    def _shifted_windows(self, x: Tensor, window: Sequence[int], shift: Sequence[int]) -> "ShiftedWindows":
        key = (tuple(x.shape[1:4]), tuple(window), tuple(shift), x.device, x.dtype)
        cache = self.__dict__.setdefault("_layouts", {})  # not a buffer: never saved, moved or cast
        if key not in cache:
            cache.clear()  # one input shape at a time in practice; do not hoard layouts of past shapes
            cache[key] = ShiftedWindows.of(x, window, shift)
        return cache[key]

    def _attend(self, windows: Tensor, bias: Tensor, layout: "ShiftedWindows | None") -> Tensor:
        """(B, nW, V, C) -> (B, nW, V, C); bias (1, heads, V, V); the windows of a shifted block come in
        ``layout``'s order, with its masks."""
        batch, num_windows, volume, channels = windows.shape
        qkv = self.qkv(windows).view(batch, num_windows, volume, 3, self.num_heads, channels // self.num_heads)
        qkv = qkv.permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, heads, V, head_dim)
        groups = [(0, num_windows, None)] if layout is None else layout.groups
        outs = []
        for first, count, mask in groups:  # SDPA's fused kernels take 4-D inputs: windows fold into the batch
            query, key, value = qkv[:, :, first:first + count].reshape(3, batch * count, self.num_heads, volume,
                                                                       -1).unbind(0)
            out = attention(query, key, value, bias if mask is None else bias + mask,
                            implementation=self.attn_implementation)
            outs.append(out.view(batch, count, self.num_heads, volume, -1).transpose(2, 3))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (B, nW, V, heads, head_dim)
        return self.proj(out.reshape(batch, num_windows, volume, channels))


@dataclass(frozen=True)
class ShiftedWindows:
    """A shifted block's windows for one padded grid: window token i is grid token ``gather[i]`` (shift and split
    in one index, windows grouped by mask pattern), ``scatter`` the inverse, ``groups`` (first window, count,
    (1, 1, V, V) mask) per pattern."""
    gather: Tensor
    scatter: Tensor
    groups: list

    @classmethod
    def of(cls, x: Tensor, window: Sequence[int], shift: Sequence[int]) -> "ShiftedWindows":
        size = tuple(x.shape[1:4])
        counts_per_axis = [length // side for length, side in zip(size, window)]
        # Only the last window along a shifted axis has a mask, so the pattern is which last windows it is in.
        # Computed on the CPU: x may be a meta tensor.
        axes = torch.meshgrid(*(torch.arange(count, device="cpu") for count in counts_per_axis), indexing="ij")
        pattern_of = sum(((index == count - 1) & (step > 0)).long() << bit
                         for bit, (index, count, step) in enumerate(zip(axes, counts_per_axis, shift))).flatten()
        order = torch.sort(pattern_of, stable=True).indices
        tokens = torch.arange(size[0] * size[1] * size[2], device="cpu").view(1, *size, 1)
        rolled = torch.roll(tokens, shifts=[-step for step in shift], dims=(1, 2, 3))
        gather = split_windows(rolled, window)[0, order, :, 0].flatten()
        masks = _compute_attention_mask_3d(x, size, tuple(window), tuple(shift))[order.to(x.device)].unsqueeze(1)
        groups, first = [], 0
        for count in torch.bincount(pattern_of).tolist():
            if count:
                groups.append((first, count, masks[first:first + 1]))
                first += count
        return cls(gather.to(x.device), torch.argsort(gather).to(x.device), groups)


def split_windows(x: Tensor, window: Sequence[int]) -> Tensor:
    """(B, T, H, W, C) with T, H, W multiples of the window -> (B, nW, V, C) windows in (t, h, w) raster order."""
    batch, t, h, w, channels = x.shape
    wd, wh, ww = window
    x = x.view(batch, t // wd, wd, h // wh, wh, w // ww, ww, channels)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, -1, wd * wh * ww, channels)


def merge_windows(windows: Tensor, shape: Sequence[int], window: Sequence[int]) -> Tensor:
    """Inverse of :func:`split_windows` for a tensor of ``shape`` (B, T, H, W, C)."""
    batch, t, h, w, channels = shape
    wd, wh, ww = window
    x = windows.reshape(batch, t // wd, h // wh, w // ww, wd, wh, ww, channels)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, t, h, w, channels)
