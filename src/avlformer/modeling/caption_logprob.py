"""Log-probabilities of K sampled captions per video, with gradients, the AV work done once per video.

Self-critical training (training/scst.py) needs log p of every sampled caption under the model's ``[MASK]``-append
semantics: token c comes from the logits at a ``[MASK]`` appended after tokens 0..c-1. The reference
(:func:`avlformer.modeling.sampling.caption_logprobs`) does it in one forward of ``[real ; [MASK] ; AV]`` per
caption, so each of a video's K captions carries its own copy of the AV tokens through every layer.

The attention layout makes that copy unnecessary: AV tokens attend to AV tokens only (the learned mask block), so
their per-layer hidden states, keys and values do not depend on the caption. :func:`fast_caption_logprobs`
computes them once per video, with gradients (``generation.prefill_av``), and runs only the text rows
``[real ; [MASK]]`` of the K·B captions through the layers. Each text row attends to its own text keys (the same
causal / ``[MASK]`` mask as the reference) and to its video's AV keys, read by one matrix product per video for
all K captions (the queries of a video are grouped, the AV keys never copied). The per-caption work is then the
text rows alone; the backward pass sums the K captions' gradients into the one AV computation.

Equal to the reference within fp32 rounding, gradients included (tests/test_scst_logprob.py); with dropout on,
the K captions of a video share one AV dropout draw where the reference draws one per copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from avlformer.modeling.attention_mask import mask_to_bias
from avlformer.modeling.generation import prefill_av
from avlformer.modeling.sampling import CaptionScores, SampleOutput, scores_at_masks, scoring_mask, scoring_text
from avlformer.modeling.step_tasks import group_by_video, ungroup_by_video
from avlformer.modeling.text_transformer import TextTransformer


def _text_attention(attention, query, text_keys, text_values, text_bias, av_keys, av_values, per_video: int):
    """Softmax attention of the text rows over ``[text ; their video's AV]``, as one softmax over both parts
    (the reference's text -> AV bias is 0, so the AV part has none)."""
    length = query.shape[2]
    query = query * query.shape[-1] ** -0.5
    av_scores = ungroup_by_video(group_by_video(query, per_video) @ av_keys.transpose(-1, -2), per_video, length)
    text_scores = query @ text_keys.transpose(-1, -2) + text_bias
    probs = torch.cat([text_scores, av_scores], dim=-1).softmax(dim=-1)
    if attention.training and attention.dropout_p > 0:
        probs = F.dropout(probs, p=attention.dropout_p)
    text_probs, av_probs = probs.split([length, av_keys.shape[2]], dim=-1)
    context = text_probs @ text_values + ungroup_by_video(group_by_video(av_probs, per_video) @ av_values, per_video, length)
    return attention.merge_heads(context)


def _text_layer(layer, hidden, text_bias, av_keys, av_values, per_video: int) -> torch.Tensor:
    attention = layer.attention.self
    query, keys, values = attention.project(hidden)
    context = _text_attention(attention, query, keys, values, text_bias, av_keys, av_values, per_video)
    return layer.feed_forward(layer.attention.output(context, hidden))


def fast_caption_logprobs(model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None,
                          samples: SampleOutput, num_samples: int) -> CaptionScores:
    """log p of each sampled caption (temperature 1), rows video-major (row = b·K + k) as ``sample_captions``
    draws them; ``av_tokens (B, V, D)`` once per video. Same value as ``sampling.caption_logprobs``."""
    token_ids = samples.token_ids
    rows, steps = token_ids.shape
    if rows != av_tokens.shape[0] * num_samples:
        raise ValueError(f"{rows} caption rows for {av_tokens.shape[0]} videos x {num_samples} samples")
    text, positions = scoring_text(token_ids)
    # The text block of the reference's mask: real tokens causal, [MASK] c sees real 0..c and itself.
    text_mask = scoring_mask(steps, 0, None, token_ids.device, av_tokens.dtype)
    text_bias = mask_to_bias(text_mask.unsqueeze(0), av_tokens.dtype)
    av_bias = None if av_mask is None else mask_to_bias(av_mask.unsqueeze(0), av_tokens.dtype)
    av_keys_values = prefill_av(model, av_tokens, av_bias)  # with gradients: AV once per video

    hidden = model.bert.embeddings(text, position_ids=positions)
    recompute = model.bert.encoder.recomputes()
    for layer, (av_keys, av_values) in zip(model.bert.encoder.layer, av_keys_values):
        step = (layer, hidden, text_bias, av_keys, av_values, num_samples)
        hidden = checkpoint(_text_layer, *step, use_reentrant=False) if recompute else _text_layer(*step)

    return scores_at_masks(model, hidden[:, steps:], samples)
