"""The once-per-video AV pass of self-critical training gives the reference one-forward log-probabilities and
their gradients (modeling/caption_logprob.py against modeling/sampling.py's caption_logprobs)."""

import pytest
import torch

from avlformer.data.token_ids import SEP_ID
from avlformer.modeling.caption_logprob import fast_caption_logprobs
from avlformer.modeling.sampling import caption_logprobs, sample_captions

from training_fakes import deterministic_tiny_config, tiny_model


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
    reference, ref_av_grad, ref_grads = _scores_and_grads(model, av, drawn, samples, caption_logprobs)
    fast, fast_av_grad, fast_grads = _scores_and_grads(model, av, drawn, samples, fast_caption_logprobs)

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
        fast_caption_logprobs(model.trans_encoder, av, None, drawn, 3)


def test_text_activation_checkpointing_recomputes_the_fast_pass_with_the_same_result(monkeypatch):
    import avlformer.modeling.caption_logprob as caption_logprob
    import avlformer.modeling.generation as generation

    model, av, drawn = _setup(seed=2, videos=2, samples=2, learned_mask=True)
    model.train()
    plain, plain_av_grad, plain_grads = _scores_and_grads(model, av, drawn, 2, fast_caption_logprobs)
    calls = []
    for module in (caption_logprob, generation):
        real = module.checkpoint
        monkeypatch.setattr(module, "checkpoint", lambda fn, *a, _real=real, **k: calls.append(fn) or _real(fn, *a, **k))
    model.trans_encoder.set_gradient_checkpointing(True)
    recomputed, av_grad, grads = _scores_and_grads(model, av, drawn, 2, fast_caption_logprobs)
    layers = len(model.trans_encoder.bert.encoder.layer)
    assert len(calls) == layers + (layers - 1)  # every text layer step and every AV layer but the last
    torch.testing.assert_close(recomputed.logprob, plain.logprob, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(av_grad, plain_av_grad, rtol=1e-5, atol=1e-7)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
