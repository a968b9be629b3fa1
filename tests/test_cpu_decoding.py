"""Inference's CPU decoding hooks: each decoding step (and the LM head) at one intra-op thread, the AV prefill and
everything else at the caller's count, the tokens unchanged, the caller's count restored."""

import torch

from avlformer.inference.cpu_decoding import decoding_steps_at_one_thread
from avlformer.modeling.generation import generate

from test_generation import random_tiny_model


def test_steps_run_at_one_thread_and_the_prefill_at_the_callers_count():
    model, av_tokens, av_mask = random_tiny_model()
    plain = [generate(model, av_tokens, av_mask, max_length=8, num_beams=beams) for beams in (1, 3)]
    seen = []
    probes = [module.register_forward_pre_hook(lambda m, args, name=name: seen.append(
                  (name, args[0].shape[1], torch.get_num_threads())))
              for name, module in (("av", model.bert.img_embedding), ("text", model.bert.embeddings),
                                   ("head", model.cls.predictions.decoder))]
    torch.set_num_threads(2)
    try:
        with decoding_steps_at_one_thread(model, model.cls):
            hooked = [generate(model, av_tokens, av_mask, max_length=8, num_beams=beams) for beams in (1, 3)]
            after, cached_calls = torch.get_num_threads(), len(seen)
            uncached = generate(model, av_tokens, av_mask, max_length=4, use_cache=False)
    finally:
        torch.set_num_threads(1)
        for handle in probes:
            handle.remove()
    assert not model._forward_pre_hooks and not model.cls._forward_hooks  # removed after the block
    assert after == 2
    cached, reforward = seen[:cached_calls], seen[cached_calls:]
    assert [threads for name, _, threads in cached if name == "av"] == [2, 2]  # one prefill per generate
    assert {(length, threads) for name, length, threads in cached if name == "text"} == {(2, 1)}
    assert {threads for name, _, threads in cached if name == "head"} == {1}
    assert reforward and {threads for name, _, threads in reforward if name != "head"} == {2}  # no cache
    for before, now in zip(plain, hooked):
        assert torch.equal(before.token_ids, now.token_ids)
    assert uncached.token_ids.shape == (4, 4)
