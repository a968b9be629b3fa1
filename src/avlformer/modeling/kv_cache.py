"""The text decoder's cache of keys and values (Hugging Face's ``past_key_values``), passed through its forward.

AV keys/values depend on the video alone (AV tokens attend to AV only): the cache holds them once per video,
shared by its ``rows_per_video`` rows (beams, samples). With a ``capacity``, each row's text keys/values go into
preallocated slots written in place (text is causal, so they are final once written).

Layout, per layer: one ``(videos, heads, V + capacity·K, head_dim)`` buffer each for keys and values, AV first,
then text slot p of row k at ``V + p·K + k``, so the written slots are one contiguous prefix and a video's K rows
attend in one kernel call (queries side by side, a bias letting each row see its own text only). With
``capacity`` 0 nothing is kept between forwards (the SCST log-prob pass).

The protocol the attention modules rely on: ``update(layer_index, query, key, value, bias)`` returns what to hand
to the kernel, and ``ungroup(context)`` puts the kernel's output back in row order.
"""

from __future__ import annotations

import torch

from avlformer.modeling.attention_mask import MASK_BIAS, mask_to_bias


def group_by_video(x: torch.Tensor, per_video: int) -> torch.Tensor:
    """``(videos·K, heads, T, n)`` -> ``(videos, heads, K·T, n)``, a video's rows side by side (a view at K = 1)."""
    rows, heads, length, width = x.shape
    return (x.view(rows // per_video, per_video, heads, length, width).transpose(1, 2)
            .reshape(rows // per_video, heads, per_video * length, width))


def ungroup_by_video(x: torch.Tensor, per_video: int) -> torch.Tensor:
    """Inverse of :func:`group_by_video`."""
    videos, heads, rows_length, width = x.shape
    return (x.view(videos, heads, per_video, rows_length // per_video, width).transpose(1, 2)
            .reshape(videos * per_video, heads, rows_length // per_video, width))


def _slot_major(x: torch.Tensor, per_video: int) -> torch.Tensor:
    """``(videos·K, heads, T, n)`` -> ``(videos, heads, T·K, n)`` in the cache's text order (slot p, row k)."""
    rows, heads, length, width = x.shape
    return (x.view(rows // per_video, per_video, heads, length, width).permute(0, 2, 3, 1, 4)
            .reshape(rows // per_video, heads, length * per_video, width))


class KVCache:
    """Fill it with :meth:`prefill`, then pass it as ``cache`` to the decoder's forward with the new text tokens
    and their bias among themselves; each forward appends after the slots written (:meth:`crop` rewinds)."""

    def __init__(self, rows_per_video: int = 1, capacity: int = 0):
        self.rows_per_video, self.capacity = rows_per_video, capacity
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # text slots written, per layer
        self.num_av = 0
        self._bias_key, self._bias = None, None

    def prefill(self, model, av_tokens: torch.Tensor, av_mask: torch.Tensor | None) -> None:
        """Run the AV tokens ``(videos, V, D)`` through the model's forward under the ``(V, V)`` AV→AV mask (None:
        attend to all), keeping each layer's keys/values."""
        self.keys, self.values, self.lengths = [], [], []
        av_bias = None if av_mask is None else mask_to_bias(av_mask.unsqueeze(0), av_tokens.dtype)
        model(None, av_tokens, av_bias, output_rows=0, cache=_AVPrefill(self))

    def crop(self, length: int) -> None:
        self.lengths = [min(length, old) for old in self.lengths]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i takes row ``rows[i]``'s text entries (within its video)."""
        per_video = self.rows_per_video
        if per_video == 1 or not self.capacity:
            return
        videos = rows.shape[0] // per_video
        within = rows.view(videos, per_video) - torch.arange(videos, device=rows.device)[:, None] * per_video
        for buffer, length in zip(self.keys + self.values, self.lengths + self.lengths):
            text = buffer[:, :, self.num_av:self.num_av + length * per_video].unflatten(2, (length, per_video))
            text.copy_(text.gather(3, within[:, None, None, :, None].expand_as(text)))

    def store_av(self, layer_index: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Layer ``layer_index``'s AV keys/values (again when a checkpointed backward recomputes); the layers
        come in order."""
        self.num_av = key.shape[2]
        if self.capacity:
            videos, heads, _, width = key.shape
            shape = (videos, heads, self.num_av + self.capacity * self.rows_per_video, width)
            key_buffer, value_buffer = key.new_empty(shape), value.new_empty(shape)
            key_buffer[:, :, :self.num_av], value_buffer[:, :, :self.num_av] = key, value
            key, value = key_buffer, value_buffer
        if layer_index == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
            self.lengths.append(0)
        self.keys[layer_index], self.values[layer_index] = key, value

    def update(self, layer_index: int, query, key, value, bias):
        """The new text rows' ``query``/``key``/``value`` ``(videos·K, heads, T, head_dim)`` and their bias
        (``(1, 1, T, T)`` or None) -> the kernel's query ``(videos, heads, K·T, d)``, keys/values over
        ``[AV ; text slots 0..length+T)`` and the bias over them."""
        per_video, new = self.rows_per_video, key.shape[2]
        text_keys, text_values = _slot_major(key, per_video), _slot_major(value, per_video)
        if self.capacity:
            start = self.lengths[layer_index]
            end = start + new
            if end > self.capacity:
                raise ValueError(f"KV cache holds {self.capacity} text positions; this forward needs {end}")
            first, last = self.num_av + start * per_video, self.num_av + end * per_video
            self.keys[layer_index][:, :, first:last] = text_keys
            self.values[layer_index][:, :, first:last] = text_values
            keys, values = self.keys[layer_index][:, :, :last], self.values[layer_index][:, :, :last]
            self.lengths[layer_index] = end
        else:
            start = 0
            keys = torch.cat([self.keys[layer_index], text_keys], dim=2)
            values = torch.cat([self.values[layer_index], text_values], dim=2)
        return group_by_video(query, per_video), keys, values, self._grouped_bias(start, new, bias, key)

    def ungroup(self, context: torch.Tensor) -> torch.Tensor:
        return ungroup_by_video(context, self.rows_per_video)

    def _grouped_bias(self, start: int, new: int, bias, like: torch.Tensor) -> torch.Tensor:
        """``(1, 1, K·T, V + (start+T)·K)``: 0 to AV, each row's own earlier slots and what ``bias`` allows among
        its new ones; ``MASK_BIAS`` to other rows'. Built once per forward, for all layers."""
        key = (start, new, None if bias is None else (bias.data_ptr(), bias.dtype), like.dtype, like.device)
        if key != self._bias_key:
            per_video, end = self.rows_per_video, start + new
            own = like.new_zeros(new, end)
            if bias is not None:
                own[:, start:] = bias.reshape(new, new)
            text = like.new_full((per_video, new, end, per_video), MASK_BIAS)
            text.diagonal(dim1=0, dim2=3).copy_(own.unsqueeze(-1))
            grouped = torch.cat([like.new_zeros(per_video * new, self.num_av),
                                 text.view(per_video * new, end * per_video)], dim=1)
            self._bias_key, self._bias = key, grouped[None, None]
        return self._bias


class _AVPrefill:
    """The layers' cache while the AV tokens run: each stores its keys and values. Not a mode of the cache, so a
    recomputing backward (activation checkpointing) replays the same role."""

    def __init__(self, cache: KVCache):
        self.cache = cache

    def update(self, layer_index: int, query, key, value, bias):
        self.cache.store_av(layer_index, key, value)
        return query, key, value, bias

    def ungroup(self, context: torch.Tensor) -> torch.Tensor:
        return context
