"""Sampling for self-critical training: the KV-cached stepper draws the same ids as the re-forward reference, and
the one-forward log-probabilities equal the [MASK]-append step-by-step ones."""

import pytest
import torch
import torch.nn.functional as F

from avlformer.data.token_ids import PAD_ID, SEP_ID
from avlformer.modeling.generation import ReforwardStepper
from avlformer.modeling.sampling import (caption_logprobs, draw, filter_logits, sample_captions)

from training_fakes import deterministic_tiny_config, tiny_model


def _model_and_av(seed=0, videos=2):
    model = tiny_model(deterministic_tiny_config(), seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    frames = torch.randn(videos, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=gen)
    audio = 0.1 * torch.randn(videos, 1, cfg.audio.clip_samples, generator=gen)
    with torch.no_grad():
        av = model.encode_av(frames, audio)
    # A flat random model would sample near-uniformly over 30k tokens: sharpen the head so captions end and
    # the [SEP] / [PAD] bookkeeping is exercised.
    with torch.no_grad():
        model.trans_encoder.cls.predictions.bias[SEP_ID] += 6.0
    return model, av


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (2000, 0.95, 0.8)])
def test_cached_sampling_draws_the_same_ids_as_reforward(top_k, top_p, temperature):
    model, av = _model_and_av()
    mask = model.av_attention_mask()
    outputs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(123)
        outputs.append(sample_captions(model.trans_encoder, av, mask, num_samples=3, max_length=12, generator=gen,
                                       temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache))
    cached, reference = outputs
    assert torch.equal(cached.token_ids, reference.token_ids)
    assert torch.equal(cached.drawn, reference.drawn)
    assert cached.token_ids.shape == (6, 11)
    # Samples differ between rows (a constant draw would pass the equality above trivially).
    assert len({tuple(row.tolist()) for row in cached.token_ids}) > 1
    # Each row: drawn tokens, then [SEP], then [PAD]; nothing is drawn after [SEP].
    for ids, drawn in zip(cached.token_ids.tolist(), cached.drawn.tolist()):
        end = ids.index(SEP_ID)
        assert all(t == PAD_ID for t in ids[end + 1:]) and not any(drawn[end + 1:])


def test_another_generator_state_draws_other_captions():
    model, av = _model_and_av()
    ids = [sample_captions(model.trans_encoder, av, None, num_samples=4, max_length=12,
                           generator=torch.Generator().manual_seed(seed)).token_ids for seed in (1, 2)]
    assert not torch.equal(*ids)


def test_one_forward_logprobs_equal_step_by_step_mask_append():
    model, av = _model_and_av(seed=3)
    mask = model.av_attention_mask()
    samples = sample_captions(model.trans_encoder, av, mask, num_samples=2, max_length=10,
                              generator=torch.Generator().manual_seed(5))
    scores = caption_logprobs(model.trans_encoder, av, mask, samples, num_samples=2)
    # Reference: re-forward [CLS] t1 .. t_{c-1} [MASK] for every step and read the logit at [MASK].
    stepper = ReforwardStepper(model.trans_encoder, av, mask, expand=2)
    rows, steps = samples.token_ids.shape
    expected = torch.zeros(rows, dtype=torch.float64)
    prefix = torch.full((rows, 1), 101)
    with torch.no_grad():
        for c in range(steps):
            logprobs = F.log_softmax(stepper.next_logits(prefix).float(), dim=-1)
            chosen = logprobs.gather(1, samples.token_ids[:, c:c + 1]).squeeze(1)
            expected += (chosen * samples.drawn[:, c]).double()
            prefix = torch.cat([prefix, samples.token_ids[:, c:c + 1]], dim=1)
    torch.testing.assert_close(scores.logprob.double(), expected, atol=1e-4, rtol=1e-5)
    assert scores.logprob.requires_grad
    scores.logprob.sum().backward()
    assert model.trans_encoder.cls.predictions.decoder.weight.grad.abs().sum() > 0
    assert scores.entropy > 0


def test_filters_keep_the_top_tokens_and_draw_never_picks_a_removed_one():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False, False]]
    # softmax of [3, 2, 1, 0, -1] ~ 0.64, 0.24, 0.09, ...: top_p 0.8 keeps the first two.
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, False, True, False, False]]
    probs = filter_logits(logits, top_k=2).softmax(-1).expand(1000, 5)
    picks = draw(probs, 1.0 - torch.rand(1000, generator=torch.Generator().manual_seed(0)))
    assert set(picks.tolist()) == {0, 2}
    assert draw(probs[:1], torch.tensor([1.0])).item() == 2  # u = 1 is the top of the CDF, never past it
