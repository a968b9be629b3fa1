"""The training fast paths compute what the reference paths compute: biased_attention vs SDPA / eager attention
(values, gradients, dropout draws), the cached Swin shift mask, and which parts activation checkpointing covers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.video.swin_transformer import _compute_attention_mask_3d

from avlformer.modeling import video_swin
from avlformer.modeling.attention_mask import biased_attention
from avlformer.modeling.avlformer import WORTH_CHECKPOINTING, AVLFormer, AVLFormerConfig
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig

SMALL_TEXT = dict(vocab_size=120, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                  max_position_embeddings=64, img_feature_dim=16, hidden_dropout=0.2, attention_dropout=0.3)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_biased_attention_equals_sdpa_with_gradients_and_dropout_draws(dropout_p):
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 24, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 1, 24, 24, dtype=torch.float64, requires_grad=True)
    constant = torch.randn(2, 1, 24, 24, dtype=torch.float64)
    weights = torch.randn(2, 3, 24, 8, dtype=torch.float64)
    results = []
    for attend in (lambda: biased_attention(query, key, value, bias, constant, dropout_p),
                   lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=bias + constant,
                                                          dropout_p=dropout_p)):
        torch.manual_seed(5)  # the same generator state for both dropout draws
        out = attend()
        results.append((out, *torch.autograd.grad((out * weights).sum(), (query, key, value, bias))))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    assert results[0][4].abs().sum() > 0  # the bias really got a gradient


def test_biased_attention_drops_exactly_what_f_dropout_drops():
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, 2, 30, 8) for _ in range(3))
    torch.manual_seed(3)
    ours = biased_attention(query, key, value, None, dropout_p=0.4)
    torch.manual_seed(3)
    probs = torch.softmax(query @ key.transpose(-1, -2) / 8 ** 0.5, dim=-1)
    reference = F.dropout(probs, 0.4) @ value
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_biased_attention_refuses_a_constant_that_needs_gradients():
    tensor = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="constant_bias"):
        biased_attention(tensor, tensor, tensor, None, tensor.clone().requires_grad_(True))


def test_text_training_path_equals_eager_with_dropout():
    """Training-mode SDPA layers (biased_attention) vs the eager formulation: same seed, same outputs and
    gradients, learned-style soft bias that needs a gradient."""
    torch.manual_seed(0)
    models = [TextTransformer(TextTransformerConfig(**SMALL_TEXT, attn_implementation=kind)).train()
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


def test_swin_shift_mask_is_built_once_per_shape_and_equals_torchvision():
    attention = video_swin._WindowAttention3d(8, [2, 3, 3], [1, 1, 1], 2)
    x = torch.randn(1, 4, 6, 6, 8)
    first = attention._shift_mask(x, [2, 3, 3], [1, 1, 1])
    assert attention._shift_mask(x, [2, 3, 3], [1, 1, 1]) is first
    expected = _compute_attention_mask_3d(x, (4, 6, 6), (2, 3, 3), (1, 1, 1)).unsqueeze(1)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    other = attention._shift_mask(torch.randn(1, 4, 9, 6, 8), [2, 3, 3], [1, 1, 1])
    assert other.shape[0] == 2 * 3 * 2 and len(attention._shift_masks) == 1
    assert "_shift_masks" not in dict(attention.state_dict())


def test_swin_training_and_no_grad_paths_agree():
    torch.manual_seed(0)
    attention = video_swin._WindowAttention3d(16, [2, 3, 3], [1, 1, 1], 2)
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
    encoder = video_swin.VideoSwinEncoder(video_swin.VideoSwinConfig.nano(depths=(2, 1, 1, 2),
                                                                           use_checkpoint=True)).train()
    encoder(torch.randn(1, 4, 3, 64, 64)).sum().backward()
    assert len(calls) == 6 and all(isinstance(fn, video_swin._SwinBlock3d) for fn in calls)


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
