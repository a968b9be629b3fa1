"""Caption decoding with upstream's ``[MASK]``-append semantics (docs/upstream.md §3.7): greedy and beam search.

Each step the model sees ``[CLS] t1 … t_{c-1} [MASK]`` (text positions 0..c) plus the AV tokens, and the logits at
the ``[MASK]`` position choose token c. Two interchangeable ways to get those logits:

* :class:`ReforwardStepper` re-runs the whole sequence every step, as upstream did. It is the reference.
* :class:`CachedStepper` exploits the mask layout: AV tokens never attend to text, so their per-layer keys/values
  are computed once per video; text is causal, so a text position's keys/values never change once the position
  holds its final token. The one subtlety is that the position that held ``[MASK]`` at step c holds the chosen
  real token at step c+1, so each step feeds two tokens: the real token at c-1 (whose keys/values are kept) and
  a fresh ``[MASK]`` at c (whose keys/values are overwritten next step). Two tokens per step cost about what one
  does: at batch 1 a step is bound by reading every weight (the 30522-way head included) and the AV keys/values
  once, not by its FLOPs (docs/architecture.md, "Decoding speed"), so what matters is touching nothing else: no
  per-step mask, no cache copies, one score and one context product per layer when each video decodes one row
  (:class:`JointKVCache`), AV keys/values shared by a video's beams rather than copied per beam
  (:class:`LayerKVCache`).

Both produce identical token ids (tests check it); the decoding loops below do not know which one they drive.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from avlformer.data.token_ids import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from avlformer.device import one_cpu_thread
from avlformer.modeling.attention_mask import MASK_BIAS, build_attention_mask, mask_to_bias
from avlformer.modeling.text_transformer import TextTransformer
from avlformer.modeling import step_tasks
from avlformer.modeling.step_tasks import CacheViews
from avlformer.modeling.thread_pair import PairOrAlone, ThreadPair, split_range


@dataclass
class GenerationOutput:
    token_ids: torch.Tensor   # int64 (B, max_length): tokens after [CLS], then [SEP], then [PAD]
    confidence: torch.Tensor  # float32 (B,)


class ReforwardStepper:
    """Reference: the full ``[text ; AV]`` sequence through every layer at every step (upstream's behaviour)."""

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
        """Nothing to do: the whole state is in ``token_ids``, and beams never change video."""

    def loop_threads(self):
        """A decoding loop around this stepper keeps the caller's threads: each step is a full forward."""
        return contextlib.nullcontext()


class LayerKVCache:
    """One layer's keys/values for decoding, ``(rows, heads, positions, head_dim)``.

    The AV part is computed once per video and shared by that video's beams: attention groups the beams' queries
    into one matrix product per video, so AV keys/values are read once per step however many beams there are,
    and never copied per beam. The text part is preallocated to ``capacity`` positions, so a step writes its new
    entries in place instead of concatenating the history."""

    def __init__(self, av_keys: torch.Tensor, av_values: torch.Tensor, rows_per_video: int, capacity: int):
        self.av_keys, self.av_values = av_keys, av_values
        videos, heads, _, head_dim = av_keys.shape
        shape = (videos * rows_per_video, heads, capacity, head_dim)
        self.text_keys, self.text_values = av_keys.new_zeros(shape), av_values.new_zeros(shape)
        self.rows_per_video = rows_per_video

    def reorder(self, rows: torch.Tensor, length: int) -> None:
        """Row i takes row ``rows[i]``'s first ``length`` text entries (beams never change video: AV stays)."""
        self.text_keys[:, :, :length] = self.text_keys[rows, :, :length]
        self.text_values[:, :, :length] = self.text_values[rows, :, :length]

    def views(self, heads: slice) -> CacheViews:
        """What a step's task for the head group ``heads`` reads and writes (step_tasks.head_group_attention)."""
        return CacheViews(self.text_keys[:, heads], self.text_values[:, heads], 0, self.av_keys[:, heads],
                          self.av_values[:, heads], self.rows_per_video)


class JointKVCache:
    """One layer's keys/values for decoding one row per video (greedy, batched or not): the row's AV entries and
    its text entries side by side in one preallocated ``(rows, heads, V + capacity, head_dim)`` buffer, so a step
    attends with one score product, one softmax and one context product over ``[AV ; text]`` (no concatenation,
    no second pair of products for the text part), and writes its new text entries in place."""

    def __init__(self, av_keys: torch.Tensor, av_values: torch.Tensor, capacity: int):
        rows, heads, num_av, head_dim = av_keys.shape
        shape = (rows, heads, num_av + capacity, head_dim)
        self.keys, self.values = av_keys.new_empty(shape), av_values.new_empty(shape)
        self.keys[:, :, :num_av], self.values[:, :, :num_av] = av_keys, av_values
        self.num_av = num_av

    def reorder(self, rows: torch.Tensor, length: int) -> None:
        """Nothing to do: with one row per video, a beam reorder maps every row to itself."""

    def views(self, heads: slice) -> CacheViews:
        """What a step's task for the head group ``heads`` reads and writes (step_tasks.head_group_attention)."""
        return CacheViews(self.keys[:, heads], self.values[:, heads], self.num_av, None, None, 1)


def prefill_av(model: TextTransformer, av_tokens: torch.Tensor, bias: torch.Tensor | None) -> list:
    """Per-layer AV ``(keys, values)``: AV tokens never attend to text, so this is all the AV work of a caption.
    The last layer's AV outputs would feed nothing, so only its keys/values are computed."""
    hidden = model.bert.embed_av(av_tokens)
    layers = model.bert.encoder.layer
    keys_values = []
    recompute = model.bert.encoder.recomputes()  # self-critical training's pass with gradients
    for layer in layers[:-1]:
        if recompute:
            hidden, key_value = checkpoint(_prefill_layer, layer, hidden, bias, use_reentrant=False)
        else:
            hidden, key_value = _prefill_layer(layer, hidden, bias)
        keys_values.append(key_value)
    keys_values.append(tuple(x.contiguous() for x in layers[-1].attention.self.project_keys_values(hidden)))
    return keys_values


def _prefill_layer(layer, hidden: torch.Tensor, bias: torch.Tensor | None):
    attention = layer.attention.self
    query, key, value = attention.project(hidden)
    hidden = layer.feed_forward(layer.attention.output(attention.attend(query, key, value, bias), hidden))
    return hidden, (key.contiguous(), value.contiguous())


class CachedStepper:
    """KV-cached decoding: AV keys/values once per video, then two text tokens per step (see module docstring).

    With two or more CPU threads a step's work is cut into pairs of independent tasks run on two threads
    (:mod:`avlformer.modeling.thread_pair`, the tasks in :mod:`avlformer.modeling.step_tasks`): each layer's
    attention by head groups, its feed-forward by halves of the intermediate width, the LM head by halves of the
    vocabulary; a pair's partial output projections are summed in a fixed order, so the result is the same at any
    count of two or more. At one thread (and on a GPU) a step is one task per sublayer: cut products stream their
    weights about 9% slower on one core (smaller products). The two differ in the last bits of the logits, not in
    the tokens tests and benchmarks compare. The caches and the weight slices the tasks read are made when the
    stepper is built, so it is stepped in the grad mode it was built in (decoding: without gradients)."""

    NEW_TOKENS = 2  # the real token at c-1 and [MASK] at c
    PARALLEL_PARTS = 2  # the calling thread and the helper

    def __init__(self, model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None,
                 max_length: int, expand: int = 1):
        self.model, self.layers = model, model.bert.encoder.layer
        bias = None if av_mask is None else mask_to_bias(av_mask.unsqueeze(0), av_tokens.dtype)
        keys_values = prefill_av(model, av_tokens, bias)
        if expand == 1:
            self.caches = [JointKVCache(keys, values, max_length) for keys, values in keys_values]
        else:
            self.caches = [LayerKVCache(keys, values, expand, max_length) for keys, values in keys_values]
        # Among the two new tokens only the real one must not see the [MASK] after it (upstream's -10000 bias).
        self.new_bias = torch.triu(av_tokens.new_full((self.NEW_TOKENS, self.NEW_TOKENS), MASK_BIAS), diagonal=1)
        self.positions = torch.arange(max_length, device=av_tokens.device).unsqueeze(0)
        self.kept = 0  # text positions whose keys/values are final
        self.on_cpu = av_tokens.device.type == "cpu"
        self.paired = self.on_cpu and torch.get_num_threads() > 1  # the caller's count when decoding starts
        self.pair_or_alone = PairOrAlone()
        self.whole = _StepCut.of(model, self.caches, 1)
        self.halves = _StepCut.of(model, self.caches, self.PARALLEL_PARTS) if self.paired else None

    def next_logits(self, token_ids: torch.Tensor) -> torch.Tensor:
        """On the CPU every product runs at one intra-op thread; a caller with two or more threads gets the cut
        step on two threads. Letting torch split each product over two threads instead was measured to lose on a
        busy machine: a step is ~100 products of 0.1-1 ms, each an OpenMP region ending in a barrier, and a
        descheduled worker stalls every barrier for a scheduler slice (1.6 s against 0.18 s per step with five
        niced processes on the two cores). The pair joins 25 times per step and never waits for a task the helper
        has not started (docs/architecture.md, "Decoding speed"), and the cut step runs on the caller alone when
        that has lately been faster (``PairOrAlone``: the helper's core taken away). The AV prefill (large
        products) and the encoders keep the caller's count. The CPU runs the tasks compiled, except with gradients
        or autocast."""
        if not self.on_cpu:
            return self._step(token_ids, ThreadPair(parallel=False), self.whole, step_tasks.INTERPRETED)
        plain = not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
        tasks = step_tasks.compiled() if plain else step_tasks.INTERPRETED
        with one_cpu_thread():
            if not (self.paired and plain):
                return self._step(token_ids, ThreadPair(parallel=False), self.whole, tasks)
            # The cut step, on the pair or on the caller alone: the same bits, whichever was faster lately.
            parallel = self.pair_or_alone.choose()
            start = time.perf_counter()
            logits = self._step(token_ids, ThreadPair(parallel), self.halves, tasks)
            self.pair_or_alone.record(parallel, time.perf_counter() - start)
            return logits

    def loop_threads(self):
        """A decoding loop around this stepper runs at one intra-op thread on the CPU: its own work per step
        (log-softmax and argmax over the vocabulary, appending a token) is small, and after each two-thread region
        torch's OpenMP worker spins for a while on the core the step's helper thread needs. (With OpenMP's waiting
        made passive, a paper caption's decoding measured 7.2-7.9 s against 7.8-9.4 s without, one run each on a
        noisy machine; running the loop at one thread removes those regions instead of changing every region's
        wait.)"""
        return one_cpu_thread() if self.on_cpu else contextlib.nullcontext()

    def _step(self, token_ids: torch.Tensor, pair: ThreadPair, cut: "_StepCut", tasks: step_tasks.StepTasks):
        batch, length = token_ids.shape
        new_tokens = torch.stack([token_ids[:, -1], token_ids.new_full((batch,), MASK_ID)], dim=1)
        hidden = self.model.bert.embeddings(new_tokens, position_ids=self.positions[:, length - 1:length + 1])
        for layer, attention_groups, columns in zip(self.layers, cut.attention, cut.feed_forward):
            partials = pair.run([functools.partial(tasks.attention, hidden, weights, *views, length + 1,
                                                   self.new_bias, layer.attention.self.head_dim)
                                 for weights, views in attention_groups])
            attended = layer.attention.output.add_norm(sum(partials[1:], partials[0]), hidden)  # fixed order
            partials = pair.run([functools.partial(tasks.feed_forward, attended, *weights) for weights in columns])
            hidden = layer.output.add_norm(sum(partials[1:], partials[0]), attended)
        self.kept = length
        transformed = self.model.cls.predictions.transform(hidden[:, 1])
        parts = pair.run([functools.partial(tasks.logits, transformed, *weights) for weights in cut.vocab])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        for cache in self.caches:
            cache.reorder(beam_idx, self.kept)


@dataclass(frozen=True)
class _StepCut:
    """A step cut into ``parts`` independent tasks per sublayer, as the tasks' arguments: per layer, each head
    group's weights (query, key and value weights and biases, its columns of the output projection) with its
    share of the cache; per layer, each slice of the intermediate columns' weights; each slice of the vocabulary.
    The weights are views of the model's parameters, made once per caption rather than sliced every step."""
    attention: list
    feed_forward: list
    vocab: list

    @classmethod
    def of(cls, model: TextTransformer, caches: list, parts: int) -> "_StepCut":
        config = model.config
        attention, feed_forward = [], []
        for layer, cache in zip(model.bert.encoder.layer, caches):
            heads_module, output = layer.attention.self, layer.attention.output
            groups = []
            for heads in split_range(config.num_heads, parts):
                features = slice(heads.start * heads_module.head_dim, heads.stop * heads_module.head_dim)
                weights = [tensor for projection in (heads_module.query, heads_module.key, heads_module.value)
                           for tensor in (projection.weight[features], projection.bias[features])]
                groups.append((weights + [output.dense.weight[:, features]], cache.views(heads)))
            attention.append(groups)
            inner, outer = layer.intermediate.dense, layer.output.dense
            feed_forward.append([(inner.weight[columns], inner.bias[columns], outer.weight[:, columns])
                                 for columns in split_range(config.intermediate_size, parts)])
        head = model.cls.predictions
        vocab = [(head.decoder.weight[words], head.bias[words]) for words in split_range(config.vocab_size, parts)]
        return cls(attention, feed_forward, vocab)


def check_max_length(model: TextTransformer, max_length: int) -> None:
    """A decoded caption holds [CLS] plus at least one token and fits the text position table."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] + one token), got {max_length}")
    if max_length > model.config.max_position_embeddings:
        raise ValueError(f"max_length {max_length} exceeds the text position table "
                         f"({model.config.max_position_embeddings})")


@contextlib.contextmanager
def decoding(model: torch.nn.Module):
    """Eval mode and no autograd for a decoding loop; the caller's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def make_stepper(model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None, *,
                 max_length: int, expand: int, use_cache: bool):
    if use_cache:
        return CachedStepper(model, av_tokens, av_mask, max_length, expand)
    return ReforwardStepper(model, av_tokens, av_mask, expand)


def _score_dtype(logits: torch.Tensor) -> torch.Tensor:
    """Scores in at least fp32: bf16 log-probs would make beam ranking and confidence coarse."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def pad_right(token_ids: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - token_ids.shape[1]
    if missing <= 0:
        return token_ids[:, :length]
    return torch.cat([token_ids, token_ids.new_full((token_ids.shape[0], missing), PAD_ID)], dim=1)


def append_token(token_ids: torch.Tensor, next_tokens: torch.Tensor, unfinished: torch.Tensor) -> torch.Tensor:
    """``token_ids`` with one more column: ``next_tokens`` for open rows, [PAD] after [SEP]; ``unfinished``
    (updated in place) closes the rows that just chose [SEP]."""
    next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, PAD_ID))
    unfinished &= next_tokens != SEP_ID
    return torch.cat([token_ids, next_tokens[:, None]], dim=1)


@torch.no_grad()
def greedy_search(stepper, batch: int, max_length: int, device) -> GenerationOutput:
    """Upstream ``_generate_no_beam_search`` with sampling off: argmax per step, [PAD] after [SEP], the last
    position forced to [SEP] for sequences still open at ``max_length``; confidence = exp(mean log-prob over the
    steps each sequence was still open, the [SEP] step included)."""
    token_ids = torch.full((batch, 1), CLS_ID, dtype=torch.long, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    logprob_sum = torch.zeros(batch, dtype=torch.float64, device=device)
    open_steps = torch.zeros(batch, dtype=torch.float64, device=device)
    with stepper.loop_threads():
        while token_ids.shape[1] < max_length:
            logits = _score_dtype(stepper.next_logits(token_ids))
            next_tokens = logits.argmax(dim=-1)
            chosen_logprob = F.log_softmax(logits, dim=-1).gather(1, next_tokens[:, None]).squeeze(1)
            logprob_sum += chosen_logprob.double() * unfinished
            open_steps += unfinished
            token_ids = append_token(token_ids, next_tokens, unfinished)
            if not unfinished.any():
                break
    if token_ids.shape[1] == max_length:
        token_ids[unfinished, -1] = SEP_ID
    confidence = torch.exp(logprob_sum / open_steps.clamp(min=1)).float()
    return GenerationOutput(pad_right(token_ids[:, 1:], max_length), confidence)


class BeamHypotheses:
    """Finished hypotheses of one video, scored ``sum_logprob / len(hyp) ** length_penalty`` (hyp holds [CLS],
    not [SEP]); ``early_stopping`` is False as upstream."""

    def __init__(self, num_keep: int, max_length: int, length_penalty: float):
        self.num_keep, self.length_penalty = num_keep, length_penalty
        self.max_length = max_length - 1  # upstream ignores the [CLS] here
        self.hyps: list[tuple[float, torch.Tensor]] = []
        self.worst_score = 1e9

    def add(self, hyp: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / len(hyp) ** self.length_penalty
        if len(self.hyps) < self.num_keep or score > self.worst_score:
            self.hyps.append((score, hyp))
            if len(self.hyps) > self.num_keep:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.hyps))
                del self.hyps[ranked[0][1]]
                self.worst_score = ranked[1][0]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float) -> bool:
        if len(self.hyps) < self.num_keep:
            return False
        return self.worst_score >= best_sum_logprobs / self.max_length ** self.length_penalty

    def best(self) -> tuple[float, torch.Tensor]:
        return max(self.hyps, key=lambda item: item[0])


CANDIDATES_PER_BEAM = 2  # upstream TOPN_PER_BEAM: spare candidates so a beam survives when one ends in [SEP]


@torch.no_grad()
def beam_search(stepper, batch: int, num_beams: int, max_length: int, length_penalty: float,
                device) -> GenerationOutput:
    """Upstream ``_generate_beam_search`` (greedy beams, ``num_keep_best`` 1). Confidence = exp(best hyp score)."""
    with stepper.loop_threads():
        return _beam_search(stepper, batch, num_beams, max_length, length_penalty, device)


def _beam_search(stepper, batch: int, num_beams: int, max_length: int, length_penalty: float,
                 device) -> GenerationOutput:
    token_ids = torch.full((batch * num_beams, 1), CLS_ID, dtype=torch.long, device=device)
    hypotheses = [BeamHypotheses(1, max_length, length_penalty) for _ in range(batch)]
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
                next_beams.extend([(0.0, PAD_ID, first_row)] * num_beams)
                continue
            example_beams = []
            for flat_id, score in zip(top_ids[example], top_scores[example]):
                beam, word = divmod(flat_id, vocab)
                if word == SEP_ID or cur_len + 1 == max_length:
                    hypotheses[example].add(token_ids[first_row + beam].clone(), score)
                else:
                    example_beams.append((score, word, first_row + beam))
                if len(example_beams) == num_beams:
                    break
            next_beams.extend(example_beams or [(0.0, PAD_ID, first_row)] * num_beams)
        beam_scores = beam_scores.new_tensor([score for score, _, _ in next_beams])
        words = token_ids.new_tensor([word for _, word, _ in next_beams])
        beam_idx = token_ids.new_tensor([row for _, _, row in next_beams])
        token_ids = torch.cat([token_ids[beam_idx], words[:, None]], dim=1)
        stepper.reorder(beam_idx)
        if all(done):
            break
    return _best_hypotheses(hypotheses, max_length, device)


def _best_hypotheses(hypotheses: list[BeamHypotheses], max_length: int, device) -> GenerationOutput:
    token_ids = torch.full((len(hypotheses), max_length), PAD_ID, dtype=torch.long, device=device)
    confidence = torch.zeros(len(hypotheses), dtype=torch.float32, device=device)
    for row, hyps in enumerate(hypotheses):
        score, hyp = hyps.best()
        body = hyp[1:]  # drop [CLS]
        token_ids[row, :len(body)] = body
        token_ids[row, len(body)] = SEP_ID
        confidence[row] = float(torch.exp(torch.tensor(score)))
    return GenerationOutput(token_ids, confidence)


def generate(model: TextTransformer, av_tokens: torch.Tensor, av_mask: torch.Tensor | None, *,
             max_length: int = 115, num_beams: int = 1, length_penalty: float = 1.0,
             use_cache: bool = True) -> GenerationOutput:
    """Caption ids for AV tokens ``(B, V, img_feature_dim)``; ``av_mask`` is the ``(V, V)`` AV→AV mask or None.

    ``max_length`` counts [CLS] like upstream's ``max_gen_length`` (115 → at most 113 words + [SEP])."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    check_max_length(model, max_length)
    with decoding(model):
        stepper = make_stepper(model, av_tokens, av_mask, max_length=max_length, expand=num_beams,
                               use_cache=use_cache)
        batch, device = av_tokens.shape[0], av_tokens.device
        if num_beams == 1:
            return greedy_search(stepper, batch, max_length, device)
        return beam_search(stepper, batch, num_beams, max_length, length_penalty, device)
