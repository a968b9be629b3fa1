"""The fast decoding and loading paths against their references: the KV cache (one row per video) against the
full re-forward, step by step; its buffers written in place; batched greedy against one video at a time; a
checkpoint loaded by assignment on the meta device against the old way (a built model that copies the file's
tensors in)."""

import gc
from pathlib import Path

import pytest

import torch

from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.token_ids import CLS_ID
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import WEIGHTS_NAME, load_model, save_checkpoint
from avlformer.modeling.generation import CachedStepper, ReforwardStepper, generate
from avlformer.modeling.sampling import sample_captions
from avlformer.modeling.weights_file import read_weights_file

from test_generation import random_tiny_model

torch.set_num_threads(1)


def test_cached_logits_equal_reforward_at_every_step_one_row_per_video():
    model, av_tokens, av_mask = random_tiny_model()
    steps = 12
    with torch.no_grad():
        cached = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1)
        reference = ReforwardStepper(model, av_tokens, av_mask)
        token_ids = torch.full((4, 1), CLS_ID)
        for _ in range(steps):
            got = cached.next_logits(token_ids)
            assert torch.allclose(got, reference.next_logits(token_ids), rtol=0, atol=1e-10)
            token_ids = torch.cat([token_ids, got.argmax(-1, keepdim=True)], dim=1)
    assert len({tuple(row.tolist()) for row in token_ids}) > 1, "rows should decode differently"


@pytest.mark.parametrize("expand", [1, 3])
def test_cache_is_written_in_place_and_keeps_final_entries(expand):
    model, av_tokens, av_mask = random_tiny_model()
    with torch.no_grad():
        stepper = CachedStepper(model, av_tokens, av_mask, max_length=10, expand=expand)
        cache = stepper.cache
        keys, num_av = cache.keys[0], cache.num_av
        av_part = keys[:, :, :num_av].clone()
        pointers = (keys.data_ptr(), cache.values[0].data_ptr())
        token_ids = torch.full((4 * expand, 1), CLS_ID)
        history = []
        for _ in range(6):
            token_ids = torch.cat([token_ids, stepper.next_logits(token_ids).argmax(-1, keepdim=True)], dim=1)
            history.append(keys[:, :, num_av:num_av + (token_ids.shape[1] - 1) * expand].clone())
    assert (cache.keys[0].data_ptr(), cache.values[0].data_ptr()) == pointers
    assert torch.equal(keys[:, :, :num_av], av_part)
    # Entries of positions that hold their final token never change (the [MASK] slot is rewritten each step).
    final = keys[:, :, num_av:num_av + (token_ids.shape[1] - 1) * expand]
    for kept in history:
        assert torch.equal(final[:, :, :kept.shape[2]], kept)


def test_captions_equal_reforward_under_inference_mode():
    """The inference pipeline decodes under ``torch.inference_mode()``: the caches are inference tensors."""
    model, av_tokens, av_mask = random_tiny_model(seed=3)
    for num_beams in (1, 3):
        cached = generate(model, av_tokens, av_mask, max_length=14, num_beams=num_beams)
        reference = generate(model, av_tokens, av_mask, max_length=14, num_beams=num_beams, use_cache=False)
        assert torch.equal(cached.token_ids, reference.token_ids)
        assert torch.allclose(cached.confidence, reference.confidence, rtol=1e-9)
        with torch.inference_mode():
            inferred = generate(model, av_tokens, av_mask, max_length=14, num_beams=num_beams)
        assert torch.equal(inferred.token_ids, cached.token_ids)
        assert torch.equal(inferred.confidence, cached.confidence)


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


def mapped_files() -> str:
    gc.collect()  # a dropped mapping is unmapped once its last tensor is freed
    return Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_a_cpu_load_holds_its_weights_in_process_memory_not_in_the_file_mapping(tmp_path):
    """Decoding streams every weight each step, measured slower from the file's 4 KB page-cache pages: a CPU
    load copies the assigned tensors out of the memory-mapped file, so no mapping of it survives the load."""
    config = AVLFormerConfig.tiny()
    folder = save_checkpoint(tmp_path / "ckpt", AVLFormer(config).eval(), config, PreprocessRecipe.paper())
    weights = str((folder / WEIGHTS_NAME).resolve())
    mapped = read_weights_file(folder / WEIGHTS_NAME)
    assert weights in mapped_files()  # the reader does map the file: the check below can tell
    model, _ = load_model(folder)
    del mapped
    assert weights not in mapped_files()
    own = model.state_dict()
    assert all(torch.equal(own[name], tensor) for name, tensor in read_weights_file(folder / WEIGHTS_NAME).items())


def test_one_sample_per_video_draws_the_same_ids_as_reforward():
    """SCST with one sample per video; the draw must match the re-forward's."""
    model, av_tokens, av_mask = random_tiny_model()
    drawn = []
    for use_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        drawn.append(sample_captions(model, av_tokens, av_mask, num_samples=1, max_length=12, generator=generator,
                                     use_cache=use_cache).token_ids)
    assert torch.equal(drawn[0], drawn[1])
    assert len({tuple(row.tolist()) for row in drawn[0]}) > 1
