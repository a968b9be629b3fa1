"""Decoding: the KV-cached path gives the same tokens as the upstream-style re-forward path, greedy and beam, and
both run the decoder's own modules (hooks on them fire and take effect)."""

import collections
import math

import pytest
import torch

from avlformer.data.token_ids import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from avlformer.modeling.attention_mask import learned_av_mask
from avlformer.modeling.generation import BeamHypotheses, CachedStepper, ReforwardStepper, generate
from avlformer.modeling.sampling import sample_captions
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig

torch.set_num_threads(1)
NUM_AV, MAX_LENGTH = 10, 16


def random_tiny_model(seed=0, std=0.2):
    """Random weights large enough that tokens depend on the AV input and on the prefix (the default 0.02 init
    makes every step pick the same token, which would test nothing). float64 keeps both paths' rounding apart
    from any argmax tie."""
    torch.manual_seed(seed)
    config = TextTransformerConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                   max_position_embeddings=64, img_feature_dim=16)
    model = TextTransformer(config).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, 4 * std if "embedding" in name else std)
    av_tokens = torch.randn(4, NUM_AV, 16, dtype=torch.float64)
    av_mask = learned_av_mask(torch.randn(NUM_AV * NUM_AV, 1, dtype=torch.float64), NUM_AV)
    return model, av_tokens, av_mask


def stop_steps(token_ids):
    """Index of [SEP] per row (-1 when absent)."""
    return [row.tolist().index(SEP_ID) if SEP_ID in row.tolist() else -1 for row in token_ids]


def test_greedy_cached_equals_reforward_with_different_stop_steps():
    model, av_tokens, av_mask = random_tiny_model()
    max_length = 14
    cached = generate(model, av_tokens, av_mask, max_length=max_length, use_cache=True)
    reference = generate(model, av_tokens, av_mask, max_length=max_length, use_cache=False)
    steps = stop_steps(reference.token_ids)
    assert len(set(steps)) >= 3, f"test setup should stop rows at different steps, got {steps}"
    assert max(steps) == max_length - 2  # one row hit max_length and got the forced [SEP]
    assert torch.equal(cached.token_ids, reference.token_ids)
    assert torch.allclose(cached.confidence, reference.confidence, rtol=1e-6)


def test_greedy_output_format():
    model, av_tokens, av_mask = random_tiny_model()
    out = generate(model, av_tokens, av_mask, max_length=MAX_LENGTH)
    assert out.token_ids.shape == (4, MAX_LENGTH) and out.token_ids.dtype == torch.long
    assert out.confidence.shape == (4,) and out.confidence.dtype == torch.float32
    assert torch.all((out.confidence > 0) & (out.confidence <= 1))
    for row, stop in zip(out.token_ids.tolist(), stop_steps(out.token_ids)):
        assert stop >= 0
        assert CLS_ID not in row and MASK_ID not in row
        assert all(t == PAD_ID for t in row[stop + 1:]) and PAD_ID not in row[:stop]


def caption_logprobs(model, av_tokens, av_mask, caption_ids):
    """Log-probs of each token of ``[CLS] caption`` up to its [SEP], from full re-forward logits."""
    caption = [CLS_ID] + caption_ids
    stepper = ReforwardStepper(model, av_tokens, av_mask)
    logprobs = []
    for c in range(1, caption.index(SEP_ID) + 1):
        logits = stepper.next_logits(torch.tensor([caption[:c]]))
        logprobs.append(torch.log_softmax(logits, -1)[0, caption[c]].item())
    return logprobs


def test_greedy_confidence_is_exp_mean_logprob_of_open_steps():
    """Upstream's confidence, recomputed independently for captions that stopped on their own [SEP]."""
    model, av_tokens, av_mask = random_tiny_model()
    out = generate(model, av_tokens, av_mask, max_length=MAX_LENGTH)
    checked = 0
    for row, stop in enumerate(stop_steps(out.token_ids)):
        if stop < MAX_LENGTH - 2:
            logprobs = caption_logprobs(model, av_tokens[row:row + 1], av_mask, out.token_ids[row].tolist())
            assert out.confidence[row].item() == pytest.approx(math.exp(sum(logprobs) / len(logprobs)), rel=1e-6)
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_confidence_is_upstream_hypothesis_score(length_penalty):
    """score = sum log-prob (the [SEP] included) / len([CLS] + words) ** length_penalty; confidence = exp(score)."""
    model, av_tokens, av_mask = random_tiny_model()
    greedy = generate(model, av_tokens, av_mask, max_length=MAX_LENGTH)
    beam = generate(model, av_tokens, av_mask, max_length=MAX_LENGTH, num_beams=4, length_penalty=length_penalty)
    assert (greedy.token_ids != beam.token_ids).any(), "beam search should change a caption in this setup"
    checked = 0
    for row, stop in enumerate(stop_steps(beam.token_ids)):
        if stop < MAX_LENGTH - 2:
            logprobs = caption_logprobs(model, av_tokens[row:row + 1], av_mask, beam.token_ids[row].tolist())
            score = sum(logprobs) / len(logprobs) ** length_penalty
            assert beam.confidence[row].item() == pytest.approx(math.exp(score), rel=1e-5)
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("num_beams,length_penalty", [(3, 1.0), (2, 0.5)])
def test_beam_cached_equals_reforward(num_beams, length_penalty):
    model, av_tokens, av_mask = random_tiny_model()
    cached = generate(model, av_tokens, av_mask, max_length=MAX_LENGTH, num_beams=num_beams,
                      length_penalty=length_penalty, use_cache=True)
    reference = generate(model, av_tokens, av_mask, max_length=MAX_LENGTH, num_beams=num_beams,
                         length_penalty=length_penalty, use_cache=False)
    assert torch.equal(cached.token_ids, reference.token_ids)
    assert torch.allclose(cached.confidence, reference.confidence, rtol=1e-6)
    assert all(stop >= 0 for stop in stop_steps(cached.token_ids))


def fed_lengths(model, **generate_args) -> tuple[list[int], list[int]]:
    """How many text tokens each pass embeds, and how many AV tokens, over one ``generate`` call."""
    text, av = [], []
    hooks = [model.bert.embeddings.register_forward_pre_hook(lambda m, args: text.append(args[0].shape[1])),
             model.bert.img_embedding.register_forward_pre_hook(lambda m, args: av.append(args[0].shape[1]))]
    try:
        generate(model, *generate_args.pop("inputs"), max_length=MAX_LENGTH, **generate_args)
    finally:
        for hook in hooks:
            hook.remove()
    return text, av


def test_cached_step_feeds_two_tokens_and_av_once():
    model, av_tokens, av_mask = random_tiny_model()
    text, av = fed_lengths(model, inputs=(av_tokens, av_mask), use_cache=True)
    assert av == [NUM_AV] and len(text) >= 3 and set(text) == {2}
    text, av = fed_lengths(model, inputs=(av_tokens, av_mask), use_cache=False)
    assert text[:3] == [2, 3, 4] and av[:3] == [NUM_AV] * 3  # the reference re-feeds everything


def test_cached_logprobs_equal_reforward_step_by_step_through_beam_reorders():
    """Every step's log-probs, not just the argmax: four videos x three beams, rows shuffled within each video
    between steps as beam search does."""
    model, av_tokens, av_mask = random_tiny_model()
    beams, steps = 3, 10
    cached = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=beams)
    reference = ReforwardStepper(model, av_tokens, av_mask, expand=beams)
    generator = torch.Generator().manual_seed(0)
    token_ids = torch.full((4 * beams, 1), CLS_ID)
    with torch.no_grad():
        for _ in range(steps):
            got = torch.log_softmax(cached.next_logits(token_ids), -1)
            expected = torch.log_softmax(reference.next_logits(token_ids), -1)
            assert torch.allclose(got, expected, rtol=0, atol=1e-10)
            within_video = torch.randint(0, beams, (4, beams), generator=generator)
            beam_idx = (within_video + torch.arange(4)[:, None] * beams).view(-1)
            cached.reorder(beam_idx)
            words = torch.randint(0, 128, (4 * beams, 1), generator=generator)
            token_ids = torch.cat([token_ids[beam_idx], words], dim=1)


def test_av_keys_values_are_computed_once_and_shared_by_beams():
    model, av_tokens, av_mask = random_tiny_model()
    last_query = model.bert.encoder.layer[-1].attention.self.query
    lengths = []
    hook = last_query.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        stepper = CachedStepper(model, av_tokens, av_mask, max_length=MAX_LENGTH, expand=3)
    hook.remove()
    assert lengths == [0]  # the last layer's AV outputs feed nothing: only its keys/values are computed
    keys = stepper.cache.keys[0]
    assert keys.shape[0] == 4 and keys.shape[2] == NUM_AV + 3 * MAX_LENGTH  # AV once per video, not per beam


def decoder_linears(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def run_with_linear_hooks(model, run, changed: str | None = None, added: float = 0.0):
    """``run()`` with a forward hook on every ``nn.Linear`` of the decoder: calls counted per module, and
    ``added`` added to the output of the module named ``changed``."""
    calls = collections.Counter()

    def hook(name):
        def record(module, args, output):
            calls[name] += 1
            return output + added if name == changed else None
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in decoder_linears(model).items()]
    try:
        return calls, run()
    finally:
        for handle in handles:
            handle.remove()


DECODERS = {"greedy": dict(num_beams=1), "beam": dict(num_beams=3)}


def decode(kind: str, model, av_tokens, av_mask, use_cache: bool, max_length: int = MAX_LENGTH):
    if kind == "sample":
        return sample_captions(model, av_tokens, av_mask, num_samples=2, max_length=max_length,
                               generator=torch.Generator().manual_seed(3), use_cache=use_cache).token_ids
    return generate(model, av_tokens, av_mask, max_length=max_length, use_cache=use_cache,
                    **DECODERS[kind]).token_ids


@pytest.mark.parametrize("kind", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_every_linear_module_runs_at_every_decoding_step(kind, use_cache):
    """[SEP] suppressed, so every decoder runs max_length - 1 steps: each step must run every linear module of
    the decoder (a stepper that re-implemented a layer from weight slices would skip their hooks). The cached
    path runs the layers once more for the AV prefill, and the AV embedding only there."""
    model, av_tokens, av_mask = random_tiny_model()
    with torch.no_grad():
        model.cls.predictions.bias[SEP_ID] = -1e4
    steps = MAX_LENGTH - 1
    calls, _ = run_with_linear_hooks(model, lambda: decode(kind, model, av_tokens, av_mask, use_cache))
    expected = {name: steps + use_cache if name.startswith("bert.encoder.") else steps
                for name in decoder_linears(model)}
    expected["bert.img_embedding"] = 1 if use_cache else steps
    assert dict(calls) == expected


@pytest.mark.parametrize("kind", ["greedy", "beam", "sample"])
@pytest.mark.parametrize("changed", ["bert.encoder.layer.0.attention.self.value", "cls.predictions.transform.dense"])
def test_a_hook_that_changes_a_module_changes_cached_and_uncached_captions_alike(kind, changed):
    model, av_tokens, av_mask = random_tiny_model()
    plain = decode(kind, model, av_tokens, av_mask, use_cache=True)
    changed_ids = [run_with_linear_hooks(model, lambda: decode(kind, model, av_tokens, av_mask, use_cache),
                                         changed, added=0.7)[1] for use_cache in (True, False)]
    assert torch.equal(changed_ids[0], changed_ids[1])
    assert not torch.equal(changed_ids[0], plain)


def test_steps_run_at_the_callers_thread_count_with_the_same_tokens():
    """No threading of its own: every pass runs torch's kernels at the caller's count, which changes no token."""
    model, av_tokens, av_mask = random_tiny_model(seed=3)
    counts = []
    hook = model.bert.embeddings.register_forward_pre_hook(lambda m, args: counts.append(torch.get_num_threads()))
    torch.set_num_threads(2)
    try:
        two = [generate(model, av_tokens, av_mask, max_length=14, num_beams=beams) for beams in (1, 3)]
    finally:
        torch.set_num_threads(1)
        hook.remove()
    assert set(counts) == {2}
    for beams, at_two in zip((1, 3), two):
        at_one = generate(model, av_tokens, av_mask, max_length=14, num_beams=beams)
        reference = generate(model, av_tokens, av_mask, max_length=14, num_beams=beams, use_cache=False)
        assert torch.equal(at_two.token_ids, at_one.token_ids) and torch.equal(at_two.token_ids,
                                                                             reference.token_ids)
        assert torch.allclose(at_two.confidence, reference.confidence, rtol=1e-9)


def test_no_learned_mask_and_single_token_limit():
    model, av_tokens, _ = random_tiny_model()
    a = generate(model, av_tokens, None, max_length=MAX_LENGTH, use_cache=True)
    b = generate(model, av_tokens, None, max_length=MAX_LENGTH, use_cache=False)
    assert torch.equal(a.token_ids, b.token_ids)
    short = generate(model, av_tokens, None, max_length=2)
    assert torch.equal(short.token_ids[:, 0], torch.full((4,), SEP_ID))  # the only slot is forced to [SEP]


def test_generate_rejects_bad_arguments():
    model, av_tokens, av_mask = random_tiny_model()
    with pytest.raises(ValueError, match="max_length"):
        generate(model, av_tokens, av_mask, max_length=1)
    with pytest.raises(ValueError, match="position table"):
        generate(model, av_tokens, av_mask, max_length=65)
    with pytest.raises(ValueError, match="num_beams"):
        generate(model, av_tokens, av_mask, num_beams=0)


def test_beam_hypotheses_keeps_best_and_stops_like_upstream():
    hyps = BeamHypotheses(max_length=11, length_penalty=1.0)
    hyps.add(torch.tensor([CLS_ID, 5]), -4.0)      # score -2
    hyps.add(torch.tensor([CLS_ID, 5, 6, 7]), -4.0)  # score -1: replaces
    assert hyps.kept[0] == pytest.approx(-1.0) and len(hyps.kept[1]) == 4
    assert hyps.is_done(-10.5)       # best running -10.5 / 10 = -1.05 <= worst kept -1
    assert not hyps.is_done(-9.0)    # -0.9 could still beat it
