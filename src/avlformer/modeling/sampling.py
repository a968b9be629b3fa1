"""Sampled captions for self-critical training (training/scst.py), and their log-probabilities with gradients.

Each step draws by inverse CDF from one uniform number per row, so both steppers fed the same numbers give the same
ids. :func:`caption_logprobs` scores every drawn token in one decoder forward: ``[CLS] t1 … t_{T-1}`` (causal)
then T ``[MASK]`` tokens, the c-th seeing tokens 0..c-1 and itself, with the AV part prefilled once per video.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avlformer.data.token_ids import CLS_ID, MASK_ID
from avlformer.modeling.attention_mask import mask_to_bias
from avlformer.modeling.generation import append_token, decoder_stepper, decoding, pad_right
from avlformer.modeling.kv_cache import KVCache
from avlformer.modeling.text_transformer import TextTransformer


@dataclass
class SampleOutput:
    token_ids: torch.Tensor  # int64 (rows, max_length - 1): tokens after [CLS], [SEP], then [PAD] (or the
                             # decoder's own special ids)
    drawn: torch.Tensor      # bool, same shape: positions whose token was sampled ([SEP] included when drawn)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """``logits / temperature``, -inf outside the top-k and the top-p nucleus (``top_k`` 0 and ``top_p`` 1 keep
    every token; the most likely one is always kept)."""
    logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # mass before the token already >= p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first token whose cumulative probability reaches ``u · total``, u in (0, 1]; a token
    of probability 0 is never chosen."""
    cdf = probs.cumsum(dim=-1)
    target = uniform.unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def sample_captions(model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None, *,
                    num_samples: int, max_length: int, generator: torch.Generator | None = None,
                    uniforms: torch.Tensor | None = None, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, use_cache: bool = True) -> SampleOutput:
    """``num_samples`` captions per video of ``av_tokens (B, V, D)``, rows video-major (row = b·K + k), in eval
    mode; ``max_length`` counts [CLS]. The random numbers come from ``generator`` or ``uniforms``
    ``(B·K, max_length - 1)`` in (0, 1], column t for token t+1."""
    rows = av_tokens.shape[0] * num_samples
    if (generator is None) == (uniforms is None):
        raise ValueError("give either a generator or uniforms")
    if uniforms is not None and tuple(uniforms.shape) != (rows, max_length - 1):
        raise ValueError(f"uniforms must be (B·K, max_length - 1) = {(rows, max_length - 1)}, "
                         f"got {tuple(uniforms.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = av_tokens.device
    if uniforms is not None:  # moved once, not once per step
        uniforms = uniforms.to(device=device, dtype=torch.float32)
    with decoding(model):
        stepper, ids = decoder_stepper(model, av_tokens, av_mask, max_length=max_length, expand=num_samples,
                                       use_cache=use_cache)
        token_ids = torch.full((rows, 1), ids.start, dtype=torch.long, device=device)
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        drawn = []
        while token_ids.shape[1] < max_length:
            logits = filter_logits(stepper.next_logits(token_ids).float(), temperature, top_k, top_p)
            if uniforms is not None:
                uniform = uniforms[:, token_ids.shape[1] - 1].to(logits.dtype)
            else:
                uniform = 1.0 - torch.rand(rows, generator=generator, device=device, dtype=logits.dtype)
            next_tokens = draw(logits.softmax(dim=-1), uniform)
            drawn.append(unfinished.clone())
            token_ids = append_token(token_ids, next_tokens, unfinished, ids)
            if not unfinished.any():
                break
    drawn = torch.stack(drawn, dim=1)
    if token_ids.shape[1] == max_length:  # still open at the limit: [SEP] replaces the last draw, as greedy does
        token_ids[unfinished, -1] = ids.end
        drawn[unfinished, -1] = False
    drawn = F.pad(drawn, (0, max_length - token_ids.shape[1]), value=False)
    return SampleOutput(pad_right(token_ids[:, 1:], max_length - 1, ids.pad), drawn)


def scoring_bias(steps: int, device, dtype) -> torch.Tensor:
    """The ``(1, 1, 2T, 2T)`` bias among the text rows of :func:`caption_logprobs`: T real tokens (causal), T
    ``[MASK]`` tokens (the c-th sees real tokens 0..c and itself)."""
    index = torch.arange(steps, device=device)
    causal = (index[:, None] >= index[None, :]).to(dtype)
    mask = torch.zeros(2 * steps, 2 * steps, device=device, dtype=dtype)
    mask[:steps, :steps] = causal                                   # real -> real
    mask[steps:, :steps] = causal                                   # [MASK] c -> real 0..c
    mask[steps:, steps:] = torch.eye(steps, device=device, dtype=dtype)
    return mask_to_bias(mask.unsqueeze(0), dtype)


@dataclass
class CaptionScores:
    logprob: torch.Tensor  # (rows,) sum of log p over drawn tokens, with gradients
    entropy: torch.Tensor  # () mean entropy of the next-token distribution over drawn positions, no gradient


def caption_logprobs(model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None,
                     samples: SampleOutput, num_samples: int) -> CaptionScores:
    """log p (temperature 1) of each caption :func:`sample_captions` drew; ``av_tokens (B, V, D)`` once per
    video. A decoder with its own ``caption_logprobs`` (a causal LM) scores through its own forward."""
    token_ids = samples.token_ids
    rows, steps = token_ids.shape
    if rows != av_tokens.shape[0] * num_samples:
        raise ValueError(f"{rows} caption rows for {av_tokens.shape[0]} videos x {num_samples} samples")
    if hasattr(model, "caption_logprobs"):
        return model.caption_logprobs(av_tokens, av_mask, samples, num_samples)
    text, positions = scoring_text(token_ids)
    cache = KVCache(rows_per_video=num_samples)
    cache.prefill(model, av_tokens, av_mask)
    hidden = model(text, attention_bias=scoring_bias(steps, token_ids.device, av_tokens.dtype),
                   position_ids=positions, cache=cache)
    return drawn_token_scores(model.logits(hidden[:, steps:][samples.drawn]), samples)


def scoring_text(token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] t1 … t_{T-1}`` then T ``[MASK]`` tokens, and their positions (0..T-1, then 1..T)."""
    rows, steps = token_ids.shape
    real = torch.cat([token_ids.new_full((rows, 1), CLS_ID), token_ids[:, :steps - 1]], dim=1)
    text = torch.cat([real, torch.full_like(real, MASK_ID)], dim=1)
    positions = torch.cat([torch.arange(steps), torch.arange(1, steps + 1)]).to(token_ids.device).unsqueeze(0)
    return text, positions


def drawn_token_scores(logits: torch.Tensor, samples: SampleOutput) -> CaptionScores:
    """Per-row log p of the drawn tokens (and the mean entropy) from the logits that chose them, ``(N, vocab)``
    for the N drawn positions in row-major order (``samples.drawn``)."""
    token_ids, drawn = samples.token_ids, samples.drawn
    logprobs = F.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, token_ids[drawn].unsqueeze(1)).squeeze(1)
    per_row = torch.zeros(token_ids.shape[0], dtype=chosen.dtype, device=chosen.device).index_put(
        (drawn.nonzero()[:, 0],), chosen, accumulate=True)
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1).mean() if chosen.numel() else chosen.new_zeros(())
    return CaptionScores(per_row, entropy)
