"""The training fast paths compute what the reference paths compute: biased_attention vs SDPA / eager attention
(values, gradients, the dropout mask, at every block size), the cached Swin shift mask, and which parts
activation checkpointing covers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.video.swin_transformer import _compute_attention_mask_3d

from avlformer.modeling import cpu_attention, swin_window_attention, video_swin
from avlformer.modeling.cpu_attention import biased_attention
from avlformer.modeling.avlformer import WORTH_CHECKPOINTING, AVLFormer, AVLFormerConfig
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig

SMALL_TEXT = dict(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=64, img_feature_dim=16, hidden_dropout=0.2, attention_dropout=0.3)


# (query, key/value, bias, constant): Swin's windows (bias shared by windows, shift mask shared by heads), the text
# transformer (one bias per sample), and a key-padding bias (one row per sample).
LAYOUTS = {
    "swin": ((2, 3, 2, 20, 8), (2, 3, 2, 20, 8), (1, 2, 20, 20), (3, 1, 20, 20)),
    "text": ((2, 3, 24, 8), (2, 3, 24, 8), (2, 1, 24, 24), None),
    "key_padding": ((2, 3, 24, 8), (2, 3, 30, 8), (2, 1, 1, 30), (1, 1, 24, 30)),
}


def _operands(layout, dtype=torch.float64):
    query_shape, key_shape, bias_shape, constant_shape = LAYOUTS[layout]
    query = torch.randn(query_shape, dtype=dtype, requires_grad=True)
    key, value = (torch.randn(key_shape, dtype=dtype, requires_grad=True) for _ in range(2))
    bias = torch.randn(bias_shape, dtype=dtype, requires_grad=True)
    constant = None if constant_shape is None else torch.randn(constant_shape, dtype=dtype)
    return query, key, value, bias, constant


def _with_grads(out, inputs):
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return (out, *torch.autograd.grad((out * weights).sum(), inputs))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
# one block; runs of heads (a ragged last run for "text"); runs of rows (ragged); one or two rows
@pytest.mark.parametrize("block_scores", [1 << 20, 1200, 500, 40])
def test_biased_attention_equals_sdpa_with_gradients(layout, block_scores, monkeypatch):
    monkeypatch.setattr(cpu_attention, "BLOCK_SCORES", block_scores)
    torch.manual_seed(0)
    query, key, value, bias, constant = _operands(layout)
    inputs = (query, key, value, bias)
    full_bias = bias if constant is None else bias + constant
    ours = _with_grads(biased_attention(query, key, value, full_bias), inputs)
    reference = _with_grads(F.scaled_dot_product_attention(query, key, value, attn_mask=full_bias), inputs)
    for got, expected in zip(ours, reference):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert ours[4].abs().sum() > 0  # the bias really got a gradient


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_biased_attention_dropout_is_the_reference_with_the_drawn_mask_at_any_block_size(layout, monkeypatch):
    """The keep mask is one draw over the whole score tensor in memory order, whatever the blocks: a seed gives
    the same result at every block size, equal to dense attention with that mask and F.dropout's scaling."""
    torch.manual_seed(0)
    query, key, value, bias, constant = _operands(layout)
    inputs = (query, key, value, bias)
    results = []
    for block_scores in (1 << 20, 1200, 500, 40):
        monkeypatch.setattr(cpu_attention, "BLOCK_SCORES", block_scores)
        torch.manual_seed(3)
        full_bias = bias if constant is None else bias + constant
        results.append(_with_grads(biased_attention(query, key, value, full_bias, dropout_p=0.3), inputs))
    torch.manual_seed(3)
    scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5 + bias
    scores = scores if constant is None else scores + constant
    keep = cpu_attention.KeepDraws(0.3).fill(torch.empty(scores.shape, dtype=torch.bool))
    reference = _with_grads(torch.softmax(scores, -1) * keep / (1 - 0.3) @ value, inputs)
    assert 0 < keep.sum() < keep.numel()
    for ours in results:
        for got, expected in zip(ours, reference):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_dropout_draws_keep_one_minus_p_and_follow_the_torch_seed():
    def draw(shape):
        return cpu_attention.KeepDraws(0.1).fill(torch.empty(shape, dtype=torch.bool))

    torch.manual_seed(1)
    first = draw((1000, 1001))  # an odd size: half a word carries over
    torch.manual_seed(1)
    again = draw((1000, 1001))
    other = draw((1000, 1001))
    assert torch.equal(first, again) and not torch.equal(first, other)
    kept = first.double().mean().item()
    assert abs(kept - 0.9) < 5 * (0.9 * 0.1 / first.numel()) ** 0.5  # five standard deviations
    torch.manual_seed(1)
    draws = cpu_attention.KeepDraws(0.1)
    parts = [draws.fill(torch.empty(n, dtype=torch.bool)) for n in (3, 1000 * 1001 - 10, 7)]
    assert torch.equal(torch.cat(parts), first.view(-1))  # the same stream whatever the pieces


def test_biased_attention_refuses_bad_arguments():
    tensor = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="same leading dims"):
        biased_attention(tensor, torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4), None)
    with pytest.raises(ValueError, match="dropout_p"):
        biased_attention(tensor, tensor, tensor, None, dropout_p=1.0)


def test_text_training_path_equals_eager_with_dropout():
    """Training-mode SDPA layers (biased_attention) vs the eager formulation: same seed, same outputs and
    gradients, learned-style soft bias that needs a gradient. Attention dropout is off here (its draws are
    biased_attention's own, tested above); the hidden dropouts draw the same in both."""
    torch.manual_seed(0)
    config = dict(SMALL_TEXT, attention_dropout=0.0)
    models = [TextTransformer(TextTransformerConfig(**config, attn_implementation=kind)).train()
              for kind in ("sdpa", "eager")]
    models[1].load_state_dict(models[0].state_dict())
    input_ids = torch.randint(5, 120, (2, 10))
    av_tokens = torch.randn(2, 6, 16)
    soft = torch.rand(2, 1, 16, 16)
    results = []
    for model in models:
        bias = ((1 - soft) * -10000.0).requires_grad_(True)
        torch.manual_seed(7)
        hidden = model(input_ids, av_tokens, bias)
        (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum().backward()
        results.append((hidden, bias.grad, model.bert.encoder.layer[0].attention.self.query.weight.grad))
    for ours, eager in zip(*results):
        torch.testing.assert_close(ours, eager, rtol=1e-4, atol=1e-5)


def test_swin_shifted_windows_are_torchvisions_grouped_by_mask_and_built_once_per_shape():
    attention = swin_window_attention.WindowAttention3d(8, [2, 3, 3], [1, 1, 1], 2)
    x = torch.randn(1, 4, 6, 6, 8)
    layout = attention._shifted_windows(x, [2, 3, 3], [1, 1, 1])
    assert attention._shifted_windows(x, [2, 3, 3], [1, 1, 1]) is layout
    # torchvision's way: roll the grid, split it into windows in raster order, one mask per window
    rolled = torch.roll(x, shifts=(-1, -1, -1), dims=(1, 2, 3))
    windows = swin_window_attention.split_windows(rolled, [2, 3, 3])[0]
    masks = _compute_attention_mask_3d(x, (4, 6, 6), (2, 3, 3), (1, 1, 1))
    gathered = x.flatten(1, 3)[0, layout.gather].unflatten(0, (-1, 18))
    assert gathered.shape == windows.shape
    source = [next(j for j in range(len(windows)) if torch.equal(window, windows[j])) for window in gathered]
    assert sorted(source) == list(range(len(windows)))  # every window once
    window_masks = torch.cat([mask.expand(count, 1, 18, 18) for _, count, mask in layout.groups])
    torch.testing.assert_close(window_masks[:, 0], masks[source], rtol=0, atol=0)
    assert torch.equal(gathered.flatten(0, 1)[layout.scatter], x.flatten(1, 3)[0])  # scatter undoes gather
    # one group per distinct mask (a window is on the far edge of each shifted axis or not: 2**3), contiguous
    assert len(layout.groups) == 8 and [first for first, _, _ in layout.groups] == sorted(
        first for first, _, _ in layout.groups)
    assert sum(count for _, count, _ in layout.groups) == len(windows)
    assert len({tuple(mask.flatten().tolist()) for _, _, mask in layout.groups}) == 8  # distinct masks
    other = attention._shifted_windows(torch.randn(1, 4, 9, 6, 8), [2, 3, 3], [1, 1, 1])
    assert sum(count for _, count, _ in other.groups) == 2 * 3 * 2 and len(attention._layouts) == 1
    assert "_layouts" not in dict(attention.state_dict())


def test_swin_training_and_no_grad_paths_agree():
    torch.manual_seed(0)
    attention = swin_window_attention.WindowAttention3d(16, [2, 3, 3], [1, 1, 1], 2)
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
    x = torch.randn(2, 4, 6, 6, 16)
    with torch.no_grad():
        reference = attention(x)  # fused SDPA
    torch.testing.assert_close(attention(x), reference, rtol=1e-5, atol=1e-5)  # biased_attention


def test_checkpointing_default_parts_and_per_block_recompute(monkeypatch):
    config = AVLFormerConfig.tiny()
    model = AVLFormer(config)
    assert WORTH_CHECKPOINTING == ("video",)
    model.set_activation_checkpointing()
    assert config.video.use_checkpoint and not config.audio.use_checkpoint
    assert not model.trans_encoder.bert.encoder.gradient_checkpointing
    model.set_activation_checkpointing(("audio", "text"))
    assert not config.video.use_checkpoint and config.audio.use_checkpoint
    assert model.trans_encoder.bert.encoder.gradient_checkpointing
    model.set_activation_checkpointing(())
    assert not (config.video.use_checkpoint or config.audio.use_checkpoint)
    with pytest.raises(ValueError, match="unknown parts"):
        model.set_activation_checkpointing(("swin",))
    calls = []
    real = video_swin.checkpoint
    monkeypatch.setattr(video_swin, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    for stages, expected_blocks in (((0, 1), 3), ((0, 1, 2, 3), 6), ((2,), 1)):
        calls.clear()
        config = video_swin.VideoSwinConfig.nano(depths=(2, 1, 1, 2), use_checkpoint=True, checkpoint_stages=stages)
        encoder = video_swin.VideoSwinEncoder(config).train()
        encoder(torch.randn(1, 4, 3, 64, 64)).sum().backward()
        assert len(calls) == expected_blocks and all(isinstance(fn, video_swin._SwinBlock3d) for fn in calls)
        stage_blocks = [list(stage.blocks) for stage in encoder.backbone.layers]
        assert calls == [block for index in stages for block in stage_blocks[index]]
    assert video_swin.VideoSwinConfig.nano().checkpoint_stages == (0, 1)
    with pytest.raises(ValueError, match="checkpoint_stages"):
        video_swin.VideoSwinConfig.nano(checkpoint_stages=(4,))


def _train_step_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_default_variants_and_original_ratios():
    bench = _train_step_benchmark()
    args = bench.parse_args([])
    cpu = bench.variants(args, "cpu")
    assert [(v["dtype"], v["attention"], v["checkpointing"]) for v in cpu] == [("fp32", "sdpa", False),
                                                                               ("fp32", "sdpa", True)]
    gpu = bench.variants(bench.parse_args(["--devices", "cuda", "--batch", "2"]), "cuda")
    assert {v["dtype"] for v in gpu} == {"bf16"} and len(gpu) == 2
    scaling = bench.variants(bench.parse_args(["--memory-scaling"]), "cpu")
    assert [v["num_frames"] for v in scaling if v.get("memory_scaling")] == [8, 16, 32]
    results = [{"device": "cpu", "dtype": "fp32", "attention": "sdpa", "checkpointing": True,
                "seconds_per_step": 22.05, "peak_memory_gb": 7.05}]
    ratios = bench.versus_original(results, args)["checkpointing"]
    assert ratios == {"speedup": 2.0, "memory_ratio": 0.5, "faster_and_smaller": True}
    with pytest.raises(ValueError, match="--attention"):
        bench.variants(bench.parse_args(["--attention", "flash"]), "cpu")
