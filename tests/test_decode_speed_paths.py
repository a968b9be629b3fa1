"""The fast decoding and loading paths against their references: the joint AV+text cache (one row per video)
against the shared-AV cache and the full re-forward, step by step; its buffers written in place; batched greedy
against one video at a time; a checkpoint loaded by assignment on the meta device against the old way (a built
model that copies the file's tensors in)."""

import copy

import torch

from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.token_ids import CLS_ID
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import WEIGHTS_NAME, load_model, save_checkpoint
from avlformer.modeling.generation import (CachedStepper, JointKVCache, LayerKVCache, ReforwardStepper,
                                          generate)
from avlformer.modeling.sampling import sample_captions
from avlformer.modeling.weights_file import read_weights_file

from test_generation import random_tiny_model

torch.set_num_threads(1)


def shared_cache_copy(stepper: CachedStepper, max_length: int) -> CachedStepper:
    """The same stepper on the shared-AV cache (the beam path) instead of the joint one."""
    other = copy.copy(stepper)
    other.caches = [LayerKVCache(c.keys[:, :, :c.num_av].clone(), c.values[:, :, :c.num_av].clone(), 1, max_length)
                    for c in stepper.caches]
    return other


def test_joint_cache_logits_equal_shared_cache_and_reforward_at_every_step():
    model, av_tokens, av_mask = random_tiny_model()
    steps = 12
    with torch.no_grad():
        joint = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1)
        assert all(isinstance(cache, JointKVCache) for cache in joint.caches)
        shared = shared_cache_copy(joint, steps + 1)
        reference = ReforwardStepper(model, av_tokens, av_mask)
        token_ids = torch.full((4, 1), CLS_ID)
        chosen = []
        for _ in range(steps):
            got = joint.next_logits(token_ids)
            assert torch.allclose(got, shared.next_logits(token_ids), rtol=0, atol=1e-10)
            assert torch.allclose(got, reference.next_logits(token_ids), rtol=0, atol=1e-10)
            token_ids = torch.cat([token_ids, got.argmax(-1, keepdim=True)], dim=1)
            chosen.append(token_ids[:, -1])
    assert len({tuple(row.tolist()) for row in torch.stack(chosen, 1)}) > 1, "rows should decode differently"


def test_joint_cache_is_written_in_place_and_keeps_final_entries():
    model, av_tokens, av_mask = random_tiny_model()
    with torch.no_grad():
        stepper = CachedStepper(model, av_tokens, av_mask, max_length=10)
        cache = stepper.caches[0]
        av_part = cache.keys[:, :, :cache.num_av].clone()
        pointers = (cache.keys.data_ptr(), cache.values.data_ptr())
        token_ids = torch.full((4, 1), CLS_ID)
        history = []
        for _ in range(6):
            token_ids = torch.cat([token_ids, stepper.next_logits(token_ids).argmax(-1, keepdim=True)], dim=1)
            history.append(cache.keys[:, :, cache.num_av:cache.num_av + token_ids.shape[1] - 1].clone())
    assert (cache.keys.data_ptr(), cache.values.data_ptr()) == pointers
    assert torch.equal(cache.keys[:, :, :cache.num_av], av_part)
    # Entries of positions that hold their final token never change (the [MASK] slot is rewritten each step).
    final = cache.keys[:, :, cache.num_av:cache.num_av + token_ids.shape[1] - 1]
    for kept in history:
        assert torch.equal(final[:, :, :kept.shape[2]], kept)


def test_batched_greedy_equals_each_video_alone():
    model, av_tokens, av_mask = random_tiny_model()
    together = generate(model, av_tokens, av_mask, max_length=14)
    for row in range(av_tokens.shape[0]):
        alone = generate(model, av_tokens[row:row + 1], av_mask, max_length=14)
        assert torch.equal(alone.token_ids[0], together.token_ids[row])
        assert torch.allclose(alone.confidence[0], together.confidence[row], rtol=1e-9)


def test_loading_by_assignment_equals_copying_into_a_built_model(tmp_path):
    """The old way built the model for real (random initialisation) and copied the file's tensors in; loading by
    assignment must give the same parameters and buffers, including the ones no file stores (Swin's relative
    position index, PaSST's window and filter banks, computed after the load), and the same outputs."""
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    saved = AVLFormer(config).eval()
    folder = save_checkpoint(tmp_path / "ckpt", saved, config, PreprocessRecipe.paper())
    torch.manual_seed(1)  # a different initialisation, overwritten by the file
    old_way = AVLFormer(config).eval()
    old_way.load_state_dict(dict(read_weights_file(folder / WEIGHTS_NAME)), strict=True)
    loaded, _ = load_model(folder)
    loaded.eval()
    expected = dict(old_way.named_parameters()) | dict(old_way.named_buffers())
    got = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert any("relative_position_index" in name for name in expected)
    generator = torch.Generator().manual_seed(3)
    frames = torch.randn(1, config.num_frames, 3, config.image_size, config.image_size, generator=generator)
    audio = torch.randn(1, 1, config.audio.clip_samples, generator=generator) * 0.1
    with torch.no_grad():
        assert torch.equal(old_way.encode_av(frames, audio), loaded.encode_av(frames, audio))
    assert torch.equal(old_way.generate(frames, audio, max_length=10).token_ids,
                       loaded.generate(frames, audio, max_length=10).token_ids)


def test_one_sample_per_video_draws_the_same_ids_on_the_joint_cache():
    """SCST with one sample per video decodes on the joint cache; the draw must match the re-forward's."""
    model, av_tokens, av_mask = random_tiny_model()
    drawn = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        drawn.append(sample_captions(model, av_tokens, av_mask, num_samples=1, max_length=12, generator=generator,
                                     use_cache=use_cache).token_ids)
    assert torch.equal(drawn[0], drawn[1])
    assert len({tuple(row.tolist()) for row in drawn[0]}) > 1
