"""Caption decoding with upstream's ``[MASK]``-append semantics (docs/architecture.md, "Generation contract"):
greedy and beam search over a stepper. :class:`ReforwardStepper` re-runs the whole sequence every step (the
reference); :class:`CachedStepper` feeds the real token at c-1 (kept in the KVCache) and a fresh ``[MASK]`` at c
(overwritten next step).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avlformer.data.token_ids import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from avlformer.modeling.attention_mask import MASK_BIAS, build_attention_mask, mask_to_bias
from avlformer.modeling.kv_cache import KVCache
from avlformer.modeling.text_transformer import TextTransformer


@dataclass(frozen=True)
class SpecialIds:
    """The start, end and padding ids the search loops write; a decoder's ``special_ids`` replace BERT's."""

    start: int = CLS_ID
    end: int = SEP_ID
    pad: int = PAD_ID


BERT_IDS = SpecialIds()


@dataclass
class GenerationOutput:
    token_ids: torch.Tensor   # int64 (B, max_length): tokens after [CLS], then [SEP], then [PAD]
    confidence: torch.Tensor  # float32 (B,)


class ReforwardStepper:

    def __init__(self, model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None,
                 expand: int = 1):
        self.model, self.av_mask = model, av_mask
        self.av_tokens = av_tokens.repeat_interleave(expand, dim=0)

    def next_logits(self, token_ids: torch.Tensor) -> torch.Tensor:
        batch, length = token_ids.shape
        masked = torch.cat([token_ids, token_ids.new_full((batch, 1), MASK_ID)], dim=1)
        text_len = torch.full((batch,), length + 1, device=token_ids.device)
        mask = build_attention_mask(text_len, length + 1, self.av_tokens.shape[1], self.av_mask,
                                    dtype=self.av_tokens.dtype)
        hidden = self.model(masked, self.av_tokens, mask_to_bias(mask))
        return self.model.logits(hidden[:, length])

    def reorder(self, beam_idx: torch.Tensor) -> None:
        pass  # the whole state is in ``token_ids``, and beams never change video


class CachedStepper:

    def __init__(self, model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None,
                 max_length: int, expand: int = 1):
        self.model = model
        self.cache = KVCache(rows_per_video=expand, capacity=max_length)
        self.cache.prefill(model, av_tokens, av_mask)
        # Among the two new tokens only the real one must not see the [MASK] after it (upstream's -10000 bias).
        self.new_bias = torch.triu(av_tokens.new_full((2, 2), MASK_BIAS), diagonal=1)
        self.positions = torch.arange(max_length, device=av_tokens.device).unsqueeze(0)

    def next_logits(self, token_ids: torch.Tensor) -> torch.Tensor:
        batch, length = token_ids.shape
        new_tokens = torch.stack([token_ids[:, -1], token_ids.new_full((batch,), MASK_ID)], dim=1)
        self.cache.crop(length - 1)  # the slot that held [MASK] now takes the chosen token
        hidden = self.model(new_tokens, attention_bias=self.new_bias,
                            position_ids=self.positions[:, length - 1:length + 1], cache=self.cache)
        return self.model.logits(hidden[:, -1])

    def reorder(self, beam_idx: torch.Tensor) -> None:
        self.cache.reorder(beam_idx)


@contextlib.contextmanager
def decoding(model: torch.nn.Module):
    """Eval mode and no autograd; the caller's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def decoder_stepper(model: torch.nn.Module, av_tokens: torch.Tensor, av_mask: torch.Tensor | None, *,
                    max_length: int, expand: int, use_cache: bool) -> tuple[object, SpecialIds]:
    """The stepper and special ids every decoding loop (greedy, beam, sampling) drives, after checking
    ``max_length``: the decoder's own when it has them (``make_stepper``, ``special_ids``: a causal LM), else the
    BERT decoder's ``[MASK]``-append ones above."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (the start token + one token), got {max_length}")
    if hasattr(model, "make_stepper"):
        return (model.make_stepper(av_tokens, av_mask, max_length=max_length, expand=expand, use_cache=use_cache),
                model.special_ids)
    if max_length > model.config.max_position_embeddings:
        raise ValueError(f"max_length {max_length} exceeds the text position table "
                         f"({model.config.max_position_embeddings})")
    if use_cache:
        return CachedStepper(model, av_tokens, av_mask, max_length, expand), BERT_IDS
    return ReforwardStepper(model, av_tokens, av_mask, expand), BERT_IDS


def _score_dtype(logits: torch.Tensor) -> torch.Tensor:
    # bf16 log-probs would make beam ranking and confidence coarse
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def pad_right(token_ids: torch.Tensor, length: int, pad: int) -> torch.Tensor:
    """``token_ids`` (never longer than ``length``) padded on the right to ``length``."""
    return torch.cat([token_ids, token_ids.new_full((token_ids.shape[0], length - token_ids.shape[1]), pad)], dim=1)


def append_token(token_ids: torch.Tensor, next_tokens: torch.Tensor, unfinished: torch.Tensor,
                 ids: SpecialIds = BERT_IDS) -> torch.Tensor:
    """``token_ids`` with ``next_tokens`` appended ([PAD] for closed rows); ``unfinished`` (in place) closes the
    rows that just chose [SEP]."""
    next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, ids.pad))
    unfinished &= next_tokens != ids.end
    return torch.cat([token_ids, next_tokens[:, None]], dim=1)


@torch.no_grad()
def greedy_search(stepper, batch: int, max_length: int, device, ids: SpecialIds = BERT_IDS) -> GenerationOutput:
    """Upstream ``_generate_no_beam_search`` without sampling; the last position is forced to [SEP] for rows still
    open at ``max_length``; confidence = exp(mean log-prob over the steps a row was open, [SEP] included)."""
    token_ids = torch.full((batch, 1), ids.start, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    logprob_sum = torch.zeros(batch, dtype=torch.float64, device=device)
    open_steps = torch.zeros(batch, dtype=torch.float64, device=device)
    while token_ids.shape[1] < max_length:
        logits = _score_dtype(stepper.next_logits(token_ids))
        next_tokens = logits.argmax(dim=-1)
        chosen_logprob = F.log_softmax(logits, dim=-1).gather(1, next_tokens[:, None]).squeeze(1)
        logprob_sum += chosen_logprob.double() * unfinished
        open_steps += unfinished
        token_ids = append_token(token_ids, next_tokens, unfinished, ids)
        if not unfinished.any():
            break
    if token_ids.shape[1] == max_length:
        token_ids[unfinished, -1] = ids.end
    confidence = torch.exp(logprob_sum / open_steps.clamp(min=1)).float()
    return GenerationOutput(pad_right(token_ids[:, 1:], max_length, ids.pad), confidence)


class BeamHypotheses:
    """The best finished hypothesis of one video (upstream's with ``num_keep_best`` 1), scored ``sum_logprob /
    len(hyp) ** length_penalty`` (hyp holds [CLS], not [SEP]); no early stopping, as upstream."""

    def __init__(self, max_length: int, length_penalty: float):
        self.length_penalty = length_penalty
        self.max_length = max_length - 1  # upstream ignores the [CLS] here
        self.kept: tuple[float, torch.Tensor] | None = None

    def add(self, hyp: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / len(hyp) ** self.length_penalty
        if self.kept is None or score > self.kept[0]:
            self.kept = (score, hyp)

    def is_done(self, best_sum_logprobs: float) -> bool:
        return self.kept is not None and self.kept[0] >= best_sum_logprobs / self.max_length ** self.length_penalty


CANDIDATES_PER_BEAM = 2  # upstream TOPN_PER_BEAM: spare candidates so a beam survives when one ends in [SEP]


@torch.no_grad()
def beam_search(stepper, batch: int, num_beams: int, max_length: int, length_penalty: float,
                device, ids: SpecialIds = BERT_IDS) -> GenerationOutput:
    """Upstream ``_generate_beam_search`` (greedy beams, ``num_keep_best`` 1). Confidence = exp(best hyp score)."""
    token_ids = torch.full((batch * num_beams, 1), ids.start, dtype=torch.long, device=device)
    hypotheses = [BeamHypotheses(max_length, length_penalty) for _ in range(batch)]
    beam_scores = torch.zeros(batch, num_beams, dtype=torch.float64, device=device)
    beam_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step one
    beam_scores = beam_scores.view(-1)
    done = [False] * batch
    while token_ids.shape[1] < max_length:
        cur_len = token_ids.shape[1]
        logprobs = F.log_softmax(_score_dtype(stepper.next_logits(token_ids)), dim=-1).double()
        vocab = logprobs.shape[-1]
        totals = (logprobs + beam_scores[:, None]).view(batch, num_beams * vocab)
        top_scores, top_ids = torch.topk(totals, CANDIDATES_PER_BEAM * num_beams, dim=1, largest=True, sorted=True)
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()
        next_beams: list[tuple[float, int, int]] = []
        for example in range(batch):
            first_row = example * num_beams
            done[example] = done[example] or hypotheses[example].is_done(max(top_scores[example]))
            if done[example]:
                next_beams.extend([(0.0, ids.pad, first_row)] * num_beams)
                continue
            example_beams = []
            for flat_id, score in zip(top_ids[example], top_scores[example]):
                beam, word = divmod(flat_id, vocab)
                if word == ids.end or cur_len + 1 == max_length:
                    hypotheses[example].add(token_ids[first_row + beam].clone(), score)
                else:
                    example_beams.append((score, word, first_row + beam))
                if len(example_beams) == num_beams:
                    break
            next_beams.extend(example_beams or [(0.0, ids.pad, first_row)] * num_beams)
        beam_scores = beam_scores.new_tensor([score for score, _, _ in next_beams])
        words = token_ids.new_tensor([word for _, word, _ in next_beams])
        beam_idx = token_ids.new_tensor([row for _, _, row in next_beams])
        token_ids = torch.cat([token_ids[beam_idx], words[:, None]], dim=1)
        stepper.reorder(beam_idx)
        if all(done):
            break
    best_ids = torch.full((batch, max_length), ids.pad, dtype=torch.long, device=device)
    confidence = torch.zeros(batch, dtype=torch.float32, device=device)
    for row, hyps in enumerate(hypotheses):  # each video's best hypothesis, then [SEP]
        score, hyp = hyps.kept
        body = hyp[1:]  # drop [CLS]
        best_ids[row, :len(body)] = body
        best_ids[row, len(body)] = ids.end
        confidence[row] = float(torch.exp(torch.tensor(score)))
    return GenerationOutput(best_ids, confidence)


def generate(model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None, *,
             max_length: int = 115, num_beams: int = 1, length_penalty: float = 1.0,
             use_cache: bool = True) -> GenerationOutput:
    """Caption ids for AV tokens ``(B, V, img_feature_dim)``; ``av_mask`` is the ``(V, V)`` AV→AV mask or None.
    ``max_length`` counts [CLS] like upstream's ``max_gen_length``; any decoder goes through
    :func:`decoder_stepper`."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    with decoding(model):
        stepper, ids = decoder_stepper(model, av_tokens, av_mask, max_length=max_length, expand=num_beams,
                                       use_cache=use_cache)
        batch, device = av_tokens.shape[0], av_tokens.device
        if num_beams == 1:
            return greedy_search(stepper, batch, max_length, device, ids)
        return beam_search(stepper, batch, num_beams, max_length, length_penalty, device, ids)
