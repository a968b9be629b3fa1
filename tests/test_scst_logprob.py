"""Self-critical training's log-probabilities, the AV part once per video through the decoder's cache, equal
one forward of ``[real ; [MASK] ; AV]`` per caption, gradients included (modeling/sampling.py's caption_logprobs
against the reference below)."""

import pytest
import torch

from avlformer.data.token_ids import SEP_ID
from avlformer.modeling import text_transformer
from avlformer.modeling.attention_mask import mask_to_bias
from avlformer.modeling.sampling import caption_logprobs, drawn_token_scores, sample_captions, scoring_text

from training_fakes import deterministic_tiny_config, tiny_model


def scoring_mask(steps: int, num_av: int, av_mask, dtype) -> torch.Tensor:
    """The ``(2T+V, 2T+V)`` mask of the reference: T real tokens (causal), T ``[MASK]`` tokens (the c-th sees
    real tokens 0..c and itself), then AV (AV only, through ``av_mask``)."""
    total = 2 * steps + num_av
    causal = torch.ones(steps, steps, dtype=dtype).tril()
    mask = torch.zeros(total, total, dtype=dtype)
    mask[:steps, :steps] = causal
    mask[steps:2 * steps, :steps] = causal
    mask[steps:2 * steps, steps:2 * steps] = torch.eye(steps, dtype=dtype)
    mask[:2 * steps, 2 * steps:] = 1.0
    mask[2 * steps:, 2 * steps:] = 1.0 if av_mask is None else av_mask.to(dtype)
    return mask


def reference_logprobs(model, av_tokens, av_mask, samples, num_samples):
    """One forward of ``[real ; [MASK] ; AV]`` per caption, a copy of its video's AV tokens in each."""
    steps = samples.token_ids.shape[1]
    text, positions = scoring_text(samples.token_ids)
    av = av_tokens.repeat_interleave(num_samples, dim=0)
    bias = mask_to_bias(scoring_mask(steps, av.shape[1], av_mask, av.dtype).unsqueeze(0))
    hidden = model(text, av, bias, position_ids=positions)[:, steps:2 * steps]
    return drawn_token_scores(model.logits(hidden[samples.drawn]), samples)


def _setup(seed: int, videos: int, samples: int, learned_mask: bool):
    model = tiny_model(deterministic_tiny_config(learn_mask_enabled=learned_mask), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    frames = torch.randn(videos, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=gen)
    audio = 0.1 * torch.randn(videos, 1, cfg.audio.clip_samples, generator=gen)
    with torch.no_grad():
        model.trans_encoder.cls.predictions.bias[SEP_ID] += 5.0  # captions of mixed lengths
        if learned_mask:  # a mask far from all-ones, so its gradient path matters
            model.learn_vid_att.weight.normal_(0.0, 2.0, generator=gen)
    av = model.encode_av(frames, audio).detach()
    mask = model.av_attention_mask()
    drawn = sample_captions(model.trans_encoder, av, mask.detach() if mask is not None else None,
                            num_samples=samples, max_length=10, generator=torch.Generator().manual_seed(seed + 1))
    return model, av, drawn


def _scores_and_grads(model, av, samples, num_samples, scorer):
    model.zero_grad(set_to_none=True)
    av = av.clone().requires_grad_(True)
    mask = model.av_attention_mask()
    scores = scorer(model.trans_encoder, av, mask, samples, num_samples)
    weights = torch.linspace(-1.0, 2.0, scores.logprob.shape[0])  # unequal advantages, like a policy gradient
    (weights * scores.logprob).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return scores, av.grad, grads


@pytest.mark.parametrize("videos,samples,learned_mask", [(2, 3, True), (3, 1, False)])
def test_fast_logprobs_and_gradients_equal_the_reference(videos, samples, learned_mask):
    model, av, drawn = _setup(seed=4, videos=videos, samples=samples, learned_mask=learned_mask)
    model.train()  # dropout is 0 in this config: train mode must not change the values
    reference, ref_av_grad, ref_grads = _scores_and_grads(model, av, drawn, samples, reference_logprobs)
    fast, fast_av_grad, fast_grads = _scores_and_grads(model, av, drawn, samples, caption_logprobs)

    assert len({tuple(row) for row in drawn.token_ids.tolist()}) > 1  # not one caption repeated
    assert drawn.drawn.sum(1).min() < drawn.drawn.sum(1).max()       # lengths differ: padding is exercised
    torch.testing.assert_close(fast.logprob, reference.logprob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.entropy, reference.entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_av_grad, ref_av_grad, rtol=1e-4, atol=1e-6)
    assert set(fast_grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert ref_av_grad.abs().sum() > 0
    if learned_mask:
        assert ref_grads["learn_vid_att.weight"].abs().sum() > 0


def test_rows_that_do_not_match_the_videos_are_refused():
    model, av, drawn = _setup(seed=1, videos=2, samples=2, learned_mask=False)
    with pytest.raises(ValueError, match="4 caption rows for 2 videos x 3 samples"):
        caption_logprobs(model.trans_encoder, av, None, drawn, 3)


def test_text_activation_checkpointing_recomputes_the_fast_pass_with_the_same_result(monkeypatch):
    model, av, drawn = _setup(seed=2, videos=2, samples=2, learned_mask=True)
    model.train()
    plain, plain_av_grad, plain_grads = _scores_and_grads(model, av, drawn, 2, caption_logprobs)
    calls = []
    real = text_transformer.checkpoint
    monkeypatch.setattr(text_transformer, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    model.trans_encoder.set_gradient_checkpointing(True)
    recomputed, av_grad, grads = _scores_and_grads(model, av, drawn, 2, caption_logprobs)
    layers = len(model.trans_encoder.bert.encoder.layer)
    assert len(calls) == 2 * layers  # every layer in the AV prefill and in the text pass
    torch.testing.assert_close(recomputed.logprob, plain.logprob, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(av_grad, plain_av_grad, rtol=1e-5, atol=1e-7)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
