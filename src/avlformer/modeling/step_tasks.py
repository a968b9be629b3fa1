"""The work of one KV-cached decoding step, as the independent tasks :class:`generation.CachedStepper` runs.

A step cut for two threads (modeling/thread_pair.py) is three kinds of task, each a slice of one layer's weights:
a head group's attention (its queries, keys and values, the cache update, attention over the cache, and the group's
share of the output projection), a slice of the feed-forward's intermediate columns, and a slice of the vocabulary.
An uncut step is the same tasks over all heads, all columns and the whole vocabulary.

The tasks are plain functions written in the subset of Python that TorchScript compiles, and on the CPU the step
runs their compiled versions (:func:`compiled`). The reason is Python's GIL: an interpreted task holds it between
its ~15 small operations, so the caller and the helper hand it back and forth all through a pair, while a compiled
task runs all its operations without it. Measured in one process on our 2-core machine (4 alternating rounds, 113
paper-size steps at two threads): 50.7 ms per step with compiled tasks against 54.0 ms for the interpreted step
they replaced; in isolation, two threads running 2000 small products each took 15.5 ms compiled (the time one
thread takes alone) against 66.4 ms interpreted. The compiled functions run the same ATen operations in the same order (TorchScript's CPU fuser is off
by default), so both give the same bits; GPUs, CPU autocast and gradients use the functions as written.
"""

from __future__ import annotations

import functools
import warnings
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def group_by_video(x: Tensor, per_video: int) -> Tensor:
    """``(videos·K, heads, T, n)`` -> ``(videos, heads, K·T, n)``: a video's K rows side by side, so one product
    with that video's AV keys/values serves all of them (a view when K is 1)."""
    rows, heads, length, width = x.shape
    return (x.view(rows // per_video, per_video, heads, length, width).transpose(1, 2)
            .reshape(rows // per_video, heads, per_video * length, width))


def ungroup_by_video(x: Tensor, per_video: int, length: int) -> Tensor:
    """Inverse of :func:`group_by_video`."""
    videos, heads, _, width = x.shape
    return (x.view(videos, heads, per_video, length, width).transpose(1, 2)
            .reshape(videos * per_video, heads, length, width))


class CacheViews(NamedTuple):
    """One head group's share of a layer's cache. ``keys``/``values`` ``(rows, h, positions, head_dim)`` are the
    buffers a step writes its new entries into, from position ``offset`` + the text position; with ``av_keys`` and
    ``av_values`` (``(videos, h, V, head_dim)``, shared by a video's ``per_video`` rows) they hold text alone,
    without them the AV entries come first in the same buffers."""
    keys: Tensor
    values: Tensor
    offset: int
    av_keys: Optional[Tensor]
    av_values: Optional[Tensor]
    per_video: int


def _group_heads(x: Tensor, head_dim: int) -> Tensor:
    """``(rows, T, h·head_dim)`` -> ``(rows, h, T, head_dim)`` for a group of h heads (``BertSelfAttention``'s
    split for all of them; a compiled function cannot call a module's method)."""
    rows, length, _ = x.shape
    return x.view(rows, length, -1, head_dim).transpose(1, 2)


def head_group_attention(hidden: Tensor, weights: List[Tensor], keys: Tensor, values: Tensor, offset: int,
                         av_keys: Optional[Tensor], av_values: Optional[Tensor], per_video: int,
                         text_length: int, new_bias: Tensor, head_dim: int) -> Tensor:
    """The last ``T`` text positions ``hidden (rows, T, hidden)`` through one head group: ``weights`` holds the
    group's query, key and value weights and biases and its columns of the output projection (bias-free: the
    caller adds the bias once to the sum over groups). The new keys/values are written at text positions
    ``[text_length - T, text_length)``; the queries attend over every AV entry and those text positions and all
    before them, ``new_bias (T, T)`` added among the new ones."""
    rows, new, _ = hidden.shape
    query = _group_heads(F.linear(hidden, weights[0], weights[1]), head_dim)
    key = _group_heads(F.linear(hidden, weights[2], weights[3]), head_dim)
    value = _group_heads(F.linear(hidden, weights[4], weights[5]), head_dim)
    start = offset + text_length - new
    keys[:, :, start:start + new] = key
    values[:, :, start:start + new] = value
    query = query * head_dim ** -0.5
    end = offset + text_length
    if av_keys is None or av_values is None:  # one buffer [AV ; text]: one score and one context product
        scores = query @ keys[:, :, :end].transpose(-1, -2)
        scores[..., -new:] += new_bias
        context = scores.softmax(dim=-1) @ values[:, :, :end]
    else:  # AV shared by a video's rows: its queries grouped into one product per video
        num_av = av_keys.shape[2]
        av_scores = ungroup_by_video(group_by_video(query, per_video) @ av_keys.transpose(-1, -2), per_video, new)
        text_scores = query @ keys[:, :, :end].transpose(-1, -2)
        text_scores[..., -new:] += new_bias
        probs = torch.cat([av_scores, text_scores], dim=-1).softmax(dim=-1)
        context = ungroup_by_video(group_by_video(probs[..., :num_av], per_video) @ av_values, per_video, new)
        context = context + probs[..., num_av:] @ values[:, :, :end]
    return F.linear(context.transpose(1, 2).reshape(rows, new, -1), weights[6])


def feed_forward_columns(attended: Tensor, inner_weight: Tensor, inner_bias: Tensor, outer_weight: Tensor) -> Tensor:
    """``BertLayer``'s feed-forward over a slice of its intermediate columns, without the output bias."""
    return F.linear(F.gelu(F.linear(attended, inner_weight, inner_bias)), outer_weight)


def vocab_logits(transformed: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The LM head's decoder over a slice of the vocabulary."""
    return F.linear(transformed, weight, bias)


class StepTasks(NamedTuple):
    attention: object
    feed_forward: object
    logits: object


INTERPRETED = StepTasks(head_group_attention, feed_forward_columns, vocab_logits)


@functools.cache
def compiled() -> StepTasks:
    """The TorchScript versions, compiled once per process on first use (a few hundred milliseconds)."""
    with warnings.catch_warnings():
        # torch.jit.script is deprecated in favour of torch.compile, which needs a C++ toolchain at run time and
        # compiles for tens of seconds; the pinned torch still supports scripting these three functions fully.
        warnings.simplefilter("ignore", FutureWarning)
        return StepTasks(*(torch.jit.script(task) for task in INTERPRETED))
