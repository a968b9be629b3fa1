"""The fast decoding and loading paths against their references: the joint AV+text cache (one row per video)
against the shared-AV cache and the full re-forward, step by step; its buffers written in place; batched greedy
against one video at a time; a checkpoint loaded by assignment on the meta device against the old way (a built
model that copies the file's tensors in)."""

import copy
import gc
import time
from pathlib import Path

import pytest

import torch

from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.token_ids import CLS_ID
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import WEIGHTS_NAME, load_model, save_checkpoint
from avlformer.modeling import generation, step_tasks, thread_pair
from avlformer.modeling.generation import (CachedStepper, JointKVCache, LayerKVCache, ReforwardStepper,
                                          generate)
from avlformer.modeling.sampling import sample_captions
from avlformer.modeling.thread_pair import PairOrAlone
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


@pytest.fixture
def two_threads():
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(1)


@pytest.mark.parametrize("expand", [1, 3])
def test_two_thread_step_equals_one_thread_step_and_reforward_at_every_step(expand, two_threads, monkeypatch):
    """The cut step of a two-thread caller (head groups, feed-forward and vocabulary halves on the caller and the
    helper thread) against the uncut one-thread step and the re-forward, on both caches."""
    pairs = []

    class RecordedPair(generation.ThreadPair):
        def __init__(self, parallel):
            super().__init__(parallel)
            pairs.append(parallel)

    monkeypatch.setattr(generation, "ThreadPair", RecordedPair)
    monkeypatch.setattr(generation.PairOrAlone, "choose", lambda self: True)  # no probe of the caller alone
    model, av_tokens, av_mask = random_tiny_model()
    steps, rows = 10, av_tokens.shape[0] * expand
    with torch.no_grad():
        paired = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=expand)
        torch.set_num_threads(1)  # the caller's count when decoding starts decides
        whole = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=expand)
        torch.set_num_threads(2)
        reference = ReforwardStepper(model, av_tokens, av_mask, expand=expand)
        assert len(paired.halves.attention[0]) == 2 and len(paired.whole.attention[0]) == 1  # head groups
        token_ids = torch.full((rows, 1), CLS_ID)
        for _ in range(steps):
            got = paired.next_logits(token_ids)
            alone = whole.next_logits(token_ids)
            assert torch.allclose(got, alone, rtol=0, atol=1e-10)
            assert torch.allclose(got, reference.next_logits(token_ids), rtol=0, atol=1e-10)
            token_ids = torch.cat([token_ids, got.argmax(-1, keepdim=True)], dim=1)
    assert pairs == [True, False] * steps  # two threads: the pair; one thread: the uncut step
    assert len({tuple(row.tolist()) for row in token_ids}) > 1, "rows should decode differently"


@pytest.mark.parametrize("expand", [1, 3])
def test_compiled_step_tasks_equal_the_interpreted_ones_bit_for_bit(expand, monkeypatch):
    """The CPU steps through the TorchScript versions of the step's tasks (no GIL held inside a task); with
    gradients it runs the same functions as written. Same operations in the same order: the same bits, on both
    caches."""
    used = []
    compiled = step_tasks.compiled()

    def recorded():
        used.append(True)
        return compiled

    monkeypatch.setattr(step_tasks, "compiled", recorded)
    assert all(isinstance(task, torch.jit.ScriptFunction) for task in compiled)
    model, av_tokens, av_mask = random_tiny_model(seed=5)
    steps, rows = 8, av_tokens.shape[0] * expand
    with torch.no_grad():
        fast = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=expand)
    plain = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=expand)  # with gradients
    token_ids = torch.full((rows, 1), CLS_ID)
    for _ in range(steps):
        with torch.no_grad():
            got = fast.next_logits(token_ids)
        with torch.enable_grad():
            expected = plain.next_logits(token_ids)
        assert expected.requires_grad and not got.requires_grad
        assert torch.equal(got, expected.detach())
        token_ids = torch.cat([token_ids, got.argmax(-1, keepdim=True)], dim=1)
    assert len(used) == steps  # once per no-grad step, never with gradients


@pytest.mark.parametrize("expand", [1, 3])
def test_a_slow_helper_sends_the_cut_step_to_the_caller_alone_with_the_same_bits(expand, two_threads, monkeypatch):
    """When the pair is slower than the caller alone (the helper's core taken away, here a delay at every join of
    the pair), the two-thread step runs on the caller alone, the same tasks: the logits keep their bits."""
    real_run = thread_pair.ThreadPair.run

    def stalled_helper(pair, tasks):
        results = real_run(pair, tasks)
        if pair.parallel:
            time.sleep(0.02)  # what a join costs when the helper's core is taken away in the middle of its task
        return results

    model, av_tokens, av_mask = random_tiny_model(seed=2)
    steps, rows = 12, av_tokens.shape[0] * expand
    with torch.no_grad():
        paired = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=expand)
        reference = CachedStepper(model, av_tokens, av_mask, max_length=steps + 1, expand=expand)
    choices = []
    real_choose = PairOrAlone.choose

    def recorded(self):
        choices.append(real_choose(self))
        return choices[-1]

    monkeypatch.setattr(paired.pair_or_alone, "choose", recorded.__get__(paired.pair_or_alone))
    monkeypatch.setattr(reference.pair_or_alone, "choose", lambda: False)  # always the caller alone
    monkeypatch.setattr(thread_pair.ThreadPair, "run", stalled_helper)
    token_ids = torch.full((rows, 1), CLS_ID)
    with torch.no_grad():
        for _ in range(steps):
            got = paired.next_logits(token_ids)
            assert torch.equal(got, reference.next_logits(token_ids))
            token_ids = torch.cat([token_ids, got.argmax(-1, keepdim=True)], dim=1)
    # Two untimed warm-up steps and one timed step on the pair, the caller alone tried on the fourth, then the
    # caller alone, with the pair tried again every fourth step.
    assert choices == [True, True, True, False] + [call % 4 == 0 for call in range(5, steps + 1)]


def test_two_thread_captions_equal_reforward_greedy_and_beam(two_threads):
    model, av_tokens, av_mask = random_tiny_model(seed=3)
    for num_beams in (1, 3):
        cached = generate(model, av_tokens, av_mask, max_length=14, num_beams=num_beams)
        reference = generate(model, av_tokens, av_mask, max_length=14, num_beams=num_beams, use_cache=False)
        assert torch.equal(cached.token_ids, reference.token_ids)
        assert torch.allclose(cached.confidence, reference.confidence, rtol=1e-9)
        with torch.inference_mode():  # as the inference pipeline decodes: the caches are inference tensors
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
