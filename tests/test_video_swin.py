"""Video Swin 3-D encoder: config, shapes, token order, checkpointing, official-checkpoint conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.models.video.swin_transformer import (
    ShiftedWindowAttention3d,
    SwinTransformer3d,
    _get_relative_position_bias,
)

import avlformer.modeling.swin_window_attention as swin_window_attention
import avlformer.modeling.video_swin as video_swin
from avlformer.modeling.video_swin import (
    VideoSwinConfig,
    VideoSwinEncoder,
    checkpoint_filter_fn,
    load_official_weights,
    relative_position_index,
)
from tests.swin_upstream import to_upstream_state_dict

MANIFEST = Path(__file__).parent / "fixtures" / "manifest_video_swin_base.json"


def independent_index(window: tuple[int, int, int]) -> torch.Tensor:
    """Upstream's relative index, derived per pair in Horner form from each token's (d, h, w)."""
    wd, wh, ww = window
    token = torch.arange(wd * wh * ww)
    d, h, w = token // (wh * ww), (token // ww) % wh, token % ww
    rel_d = d[:, None] - d[None, :] + wd - 1
    rel_h = h[:, None] - h[None, :] + wh - 1
    rel_w = w[:, None] - w[None, :] + ww - 1
    return (rel_d * (2 * wh - 1) + rel_h) * (2 * ww - 1) + rel_w


def official_checkpoint(seed: int = 0) -> dict:
    """Random tensors with the official Swin-B Kinetics-600 .pth layout (manifest shapes, real index buffers)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = json.loads(MANIFEST.read_text())
    state = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            state[key] = independent_index((8, 7, 7))
        else:
            state[key] = torch.randn(shape, generator=generator)
    state["cls_head.fc_cls.weight"] = torch.randn(600, 1024, generator=generator)
    state["cls_head.fc_cls.bias"] = torch.randn(600, generator=generator)
    return {"meta": {"epoch": 30}, "state_dict": state}


def nano_upstream(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    encoder = VideoSwinEncoder(VideoSwinConfig.nano())
    upstream = to_upstream_state_dict(encoder.state_dict())
    upstream["cls_head.fc_cls.weight"] = torch.randn(5, 128)
    upstream["cls_head.fc_cls.bias"] = torch.randn(5)
    return upstream


@pytest.fixture(scope="module")
def base_conversion():
    content = official_checkpoint()
    converted, dropped = checkpoint_filter_fn(content, VideoSwinConfig.base())
    return content["state_dict"], converted, dropped


# ---------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "preset, embed, depths, heads, out_dim",
    [
        ("tiny", 96, (2, 2, 6, 2), (3, 6, 12, 24), 768),
        ("small", 96, (2, 2, 18, 2), (3, 6, 12, 24), 768),
        ("base", 128, (2, 2, 18, 2), (4, 8, 16, 32), 1024),
        ("nano", 16, (1, 1, 1, 1), (1, 1, 2, 2), 128),
    ],
)
def test_presets(preset, embed, depths, heads, out_dim):
    config = getattr(VideoSwinConfig, preset)()
    assert (config.embed_dim, config.depths, config.num_heads) == (embed, depths, heads)
    assert config.patch_size == (2, 4, 4) and config.window_size == (8, 7, 7)
    assert config.token_width == out_dim


def test_config_dict_round_trip_through_json():
    config = VideoSwinConfig.tiny(window_size=(4, 7, 7), drop_path_rate=0.1, use_checkpoint=True)
    restored = VideoSwinConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert restored.window_size == (4, 7, 7) and restored.use_checkpoint


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown keys.*'heads'"):
        VideoSwinConfig.from_dict({**VideoSwinConfig.nano().to_dict(), "heads": 3})
    with pytest.raises(ValueError, match="equal length"):
        VideoSwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1])
    with pytest.raises(ValueError, match="stage 1 width 32 is not divisible by 3 heads"):
        VideoSwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 3])
    with pytest.raises(ValueError, match="window_size must have 3 entries"):
        VideoSwinConfig.nano(window_size=(7, 7))


def test_num_tokens_follows_patch_and_stage_count():
    assert VideoSwinConfig.base().num_tokens(32, 224) == 16 * 7 * 7
    assert VideoSwinConfig.nano().num_tokens(8, 64) == 4 * 2 * 2
    assert VideoSwinConfig.nano().num_tokens(4, (96, 64)) == 2 * 3 * 2
    three_stages = VideoSwinConfig(embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 1], patch_size=(1, 2, 2))
    assert three_stages.num_tokens(3, (16, 24)) == 3 * 2 * 3  # stride 2·2² = 8
    with pytest.raises(ValueError, match="at least one frame"):
        VideoSwinConfig.nano().num_tokens(0, 48)


@pytest.mark.parametrize(
    "frames, size, grid",
    [
        (32, 224, (16, 7, 7)),  # the paper: tiles exactly
        (8, 112, (4, 4, 4)),  # 28 -> 14 -> 7 -> 4: the last merging pads 7 to 8
        (8, 160, (4, 5, 5)),  # 40 -> 20 -> 10 -> 5
        (7, (50, 66), (4, 2, 3)),  # odd T padded to 8; 50 px padded to 52 by the patch embedding (13 -> 7 -> 4 -> 2)
        (32, 48, (16, 2, 2)),
    ],
)
def test_token_grid_follows_upstream_padding(frames, size, grid):
    """Upstream pads T, H, W to patch multiples and odd H, W at each merging; the grid follows the padded sizes."""
    assert VideoSwinConfig.base().token_grid(frames, size) == grid


@pytest.mark.parametrize("size, tokens", [(112, 4 * 4 * 4), (160, 4 * 5 * 5)])
def test_frame_sizes_that_do_not_tile_run_with_the_padded_token_count(size, tokens):
    encoder = VideoSwinEncoder(VideoSwinConfig.nano()).eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 8, 3, size, size))
    assert VideoSwinConfig.nano().num_tokens(8, size) == tokens
    assert out.shape == (1, tokens, 128)


def test_padded_input_matches_torchvision_swin3d():
    """torchvision's reference Swin3d pads as upstream does (patch embedding, odd merging, windows): same features
    for a size that does not tile, shifted windows included."""
    torch.manual_seed(0)
    encoder = VideoSwinEncoder(VideoSwinConfig.nano(depths=(2, 2, 2, 2), window_size=(2, 3, 3))).eval()
    reference = _torchvision_reference(encoder)
    frames = torch.randn(1, 7, 3, 100, 60)
    with torch.no_grad():
        tokens = encoder(frames)
        grid = reference.norm(reference.features(reference.patch_embed(frames.permute(0, 2, 1, 3, 4))))
    assert tuple(grid.shape[1:4]) == VideoSwinConfig.nano().token_grid(7, (100, 60)) == (4, 4, 2)
    torch.testing.assert_close(tokens, grid.flatten(1, 3))


# ---------------------------------------------------------------------------------------------------------------
# Forward


@pytest.mark.parametrize(
    "config, frames, size",
    [
        (VideoSwinConfig.nano(), 8, (64, 64)),
        (VideoSwinConfig.nano(), 4, (96, 64)),
        (VideoSwinConfig.nano(window_size=(2, 3, 3)), 8, (64, 96)),
        (VideoSwinConfig.tiny(), 2, (32, 32)),
    ],
)
def test_output_shape(config, frames, size):
    encoder = VideoSwinEncoder(config).eval()
    with torch.no_grad():
        tokens = encoder(torch.randn(2, frames, 3, *size))
    assert tokens.shape == (2, config.num_tokens(frames, size), config.token_width)
    assert torch.isfinite(tokens).all()


def _torchvision_reference(encoder: VideoSwinEncoder) -> SwinTransformer3d:
    """torchvision's own SwinTransformer3d assembly, loaded with our weights (names mapped)."""
    config = encoder.config
    reference = SwinTransformer3d(
        patch_size=list(config.patch_size),
        embed_dim=config.embed_dim,
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_size=list(config.window_size),
        stochastic_depth_prob=config.drop_path_rate,
    )
    renamed = {}
    for key, value in encoder.state_dict().items():
        parts = key.removeprefix("backbone.").split(".")
        if parts[0] == "layers":
            stage = int(parts[1])
            if parts[2] == "blocks":
                rest = ".".join(parts[4:]).replace("mlp.fc1", "mlp.0").replace("mlp.fc2", "mlp.3")
                parts = ["features", str(2 * stage), parts[3], rest]
            else:
                parts = ["features", str(2 * stage + 1), *parts[3:]]
        renamed[".".join(parts)] = value
    missing, unexpected = reference.load_state_dict(renamed, strict=False)
    assert not unexpected
    assert all(k.endswith("relative_position_index") or k.startswith("head.") for k in missing)
    return reference.eval()


def test_matches_torchvision_swin3d_and_upstream_token_order():
    torch.manual_seed(0)
    # Two blocks per stage so shifted windows (and their mask) run in every stage.
    encoder = VideoSwinEncoder(VideoSwinConfig.nano(depths=(2, 2, 2, 2), window_size=(2, 3, 3))).eval()
    reference = _torchvision_reference(encoder)
    frames = torch.randn(2, 8, 3, 64, 96)
    with torch.no_grad():
        tokens = encoder(frames)
        grid = reference.norm(reference.features(reference.patch_embed(frames.permute(0, 2, 1, 3, 4))))
    upstream_layout = grid.permute(0, 4, 1, 2, 3)  # upstream's backbone output (B, C, T', H', W')
    _, _, depth, height, width = upstream_layout.shape
    assert tokens.shape[1] == depth * height * width
    for d in range(depth):
        for h in range(height):
            for w in range(width):
                expected = upstream_layout[:, :, d, h, w]
                torch.testing.assert_close(tokens[:, d * height * width + h * width + w], expected)


@pytest.mark.parametrize(
    "window, shift, grid",
    [
        ((8, 7, 7), (0, 0, 0), (4, 14, 14)),  # time window clamped to 4, no shift
        ((8, 7, 7), (4, 3, 3), (4, 16, 9)),  # time clamped (shift 0 there), H and W padded, shift mask
        ((2, 3, 3), (1, 1, 1), (4, 6, 6)),  # shift mask on every axis, no padding
        ((2, 3, 3), (1, 1, 1), (2, 2, 5)),  # time and height clamped to the input
    ],
)
def test_sdpa_attention_matches_torchvision_eager(window, shift, grid):
    # float64: a shifted block's windows are grouped by mask pattern, so the weight gradients sum tokens in another
    # order than torchvision's; in float32 that alone moves a gradient's last digits by ~1e-4 relative.
    torch.manual_seed(0)
    attention = swin_window_attention.WindowAttention3d(16, list(window), list(shift), 2).double()
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()  # make the bias matter
    inputs = torch.randn(2, *grid, 16, dtype=torch.float64)
    outputs, grads = [], []
    for forward in (attention.forward, lambda x: ShiftedWindowAttention3d.forward(attention, x)):
        attention.zero_grad()
        x = inputs.clone().requires_grad_(True)
        out = forward(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append([x.grad] + [p.grad.clone() for p in attention.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-10, atol=1e-10)
    for ours, eager in zip(*grads):
        torch.testing.assert_close(ours, eager, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", [1, 2])  # one video folds windows into SDPA's batch, two into its heads
@pytest.mark.parametrize("shift,grid", [((4, 3, 3), (8, 14, 14)), ((0, 0, 0), (8, 14, 14)), ((4, 3, 3), (4, 16, 9))])
def test_inference_attention_matches_torchvision_eager(batch, shift, grid):
    torch.manual_seed(1)
    attention = swin_window_attention.WindowAttention3d(16, [8, 7, 7], list(shift), 2).eval()
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
        inputs = torch.randn(batch, *grid, 16)
        ours = attention(inputs)
        eager = ShiftedWindowAttention3d.forward(attention, inputs)
    torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [[8, 7, 7], [4, 7, 7], [2, 3, 3], [2, 2, 3]])  # full, clamped corners
def test_relative_position_bias_is_torchvisions_with_its_gradient(window):
    torch.manual_seed(2)
    attention = swin_window_attention.WindowAttention3d(16, [8, 7, 7], [0, 0, 0], 4)
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
    table, index = attention.relative_position_bias_table, attention.relative_position_index
    ours = attention.get_relative_position_bias(window)
    reference = _get_relative_position_bias(table, index, window)
    volume = window[0] * window[1] * window[2]
    assert ours.shape == (1, 4, volume, volume) and ours.is_contiguous()
    assert torch.equal(ours, reference)
    weights = torch.randn(ours.shape)
    gradients = [torch.autograd.grad((bias * weights).sum(), table)[0] for bias in (ours, reference)]
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-5, atol=1e-5)  # sums in another order
    assert gradients[0].abs().sum() > 0


def test_bfloat16_autocast_forward():
    encoder = VideoSwinEncoder(VideoSwinConfig.nano()).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = encoder(torch.randn(1, 4, 3, 64, 64))
    assert tokens.shape == (1, 8, 128) and torch.isfinite(tokens.float()).all()


def test_drop_path_grows_linearly_to_rate():
    config = VideoSwinConfig.nano(depths=(2, 1, 3, 2), drop_path_rate=0.3)
    encoder = VideoSwinEncoder(config)
    rates = [block.drop_path.p for stage in encoder.backbone.layers for block in stage.blocks]
    assert rates == pytest.approx([0.3 * i / 7 for i in range(8)])


def test_blocks_alternate_shift_and_stem_uses_layernorm():
    encoder = VideoSwinEncoder(VideoSwinConfig.nano(depths=(2, 2, 2, 2)))
    shifts = [block.attn.shift_size for stage in encoder.backbone.layers for block in stage.blocks]
    assert shifts == [[0, 0, 0], [4, 3, 3]] * 4
    assert isinstance(encoder.backbone.patch_embed.norm, torch.nn.LayerNorm)
    layer_norms = [m for m in encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert layer_norms and all(m.eps == 1e-5 for m in layer_norms)


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((2, 8, 64, 64), torch.float32, r"\(B, T, 3, H, W\), got shape \(2, 8, 64, 64\)"),
        ((2, 8, 4, 64, 64), torch.float32, r"got shape \(2, 8, 4, 64, 64\)"),
        ((2, 0, 3, 64, 64), torch.float32, "at least one frame.*got T=0"),
        ((2, 8, 3, 64, 64), torch.uint8, "float frames, got dtype torch.uint8"),
    ],
)
def test_wrong_input_is_rejected(shape, dtype, message):
    encoder = VideoSwinEncoder(VideoSwinConfig.nano())
    with pytest.raises(ValueError, match=message):
        encoder(torch.zeros(shape, dtype=dtype))


def test_activation_checkpointing_gives_same_gradients(monkeypatch):
    calls = []
    real_checkpoint = video_swin.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(video_swin, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    plain = VideoSwinEncoder(VideoSwinConfig.nano(drop_path_rate=0.3)).train()
    checkpointed = VideoSwinEncoder(VideoSwinConfig.nano(drop_path_rate=0.3, use_checkpoint=True,
                                                         checkpoint_stages=(0, 1, 2, 3))).train()
    checkpointed.load_state_dict(plain.state_dict())
    frames = torch.randn(3, 4, 3, 64, 64)
    results = []
    for encoder in (plain, checkpointed):
        torch.manual_seed(1)  # same stochastic-depth draws in both runs
        inputs = frames.clone().requires_grad_(True)
        (encoder(inputs) ** 2).mean().backward()
        grads = {name: p.grad for name, p in encoder.named_parameters()}
        results.append((inputs.grad, grads))
    assert calls == [False] * 4
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)
    checkpointed.eval()
    with torch.no_grad():
        checkpointed(frames)
    assert len(calls) == 4  # evaluation never checkpoints


# ---------------------------------------------------------------------------------------------------------------
# Relative position index


@pytest.mark.parametrize("window", [(8, 7, 7), (2, 3, 3), (1, 2, 5)])
def test_relative_position_index_formula(window):
    index = relative_position_index(window)
    assert index.dtype == torch.int64
    assert torch.equal(index, independent_index(window))
    reference = ShiftedWindowAttention3d(8, list(window), [0, 0, 0], 2).relative_position_index
    assert torch.equal(index, reference)


def test_index_buffer_is_recomputed_not_saved():
    encoder = VideoSwinEncoder(VideoSwinConfig.nano())
    assert not any("relative_position_index" in key for key in encoder.state_dict())
    buffer = encoder.backbone.layers[0].blocks[0].attn.relative_position_index
    assert torch.equal(buffer, independent_index((8, 7, 7)))


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoint conversion


def test_official_checkpoint_every_key_accounted_for(base_conversion):
    source, converted, dropped = base_conversion
    index_keys = [k for k in source if k.endswith("relative_position_index")]
    assert len(index_keys) == 24
    assert sorted(dropped) == sorted(index_keys + ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"])
    assert set(converted) | set(dropped) == set(source)
    assert len(converted) == 327


def test_official_weights_load_into_base_encoder(base_conversion):
    source, converted, _ = base_conversion
    encoder = VideoSwinEncoder(VideoSwinConfig.base())
    encoder.load_state_dict(converted, strict=True)
    qkv = encoder.backbone.layers[2].blocks[11].attn.qkv.weight
    assert torch.equal(qkv, source["backbone.layers.2.blocks.11.attn.qkv.weight"])
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, source[key]), key
    assert sum(p.numel() for p in encoder.parameters()) == 87_638_984


def test_reverse_mapping_reproduces_official_layout(base_conversion):
    source, converted, _ = base_conversion
    exported = to_upstream_state_dict(converted)
    assert list(exported) == list(json.loads(MANIFEST.read_text()))  # same names, same order
    for key, value in exported.items():
        assert torch.equal(value, source[key]), key


def test_reverse_mapping_round_trip_nano():
    encoder = VideoSwinEncoder(VideoSwinConfig.nano())
    ours = encoder.state_dict()
    back, dropped = checkpoint_filter_fn(to_upstream_state_dict(ours), encoder.config)
    assert len(dropped) == 4  # one index buffer per block
    assert list(back) == list(ours)
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    with pytest.raises(ValueError, match="2535 rows, but window \\[2, 3, 3\\] needs 75"):
        to_upstream_state_dict(ours, window_size=(2, 3, 3))


def test_converter_accepts_released_model_prefix_after_swin_is_stripped():
    released = {"swin." + k: v for k, v in nano_upstream().items() if not k.startswith("cls_head.")}
    inner = {k.removeprefix("swin."): v for k, v in released.items()}
    converted, dropped = checkpoint_filter_fn(inner, VideoSwinConfig.nano())
    assert all(k.startswith("backbone.") for k in converted) and len(dropped) == 4


def test_corrupted_relative_position_index_is_rejected():
    upstream = nano_upstream()
    key = "backbone.layers.1.blocks.0.attn.relative_position_index"
    corrupted = upstream[key].clone()
    corrupted[0, 1], corrupted[1, 0] = corrupted[1, 0].item(), corrupted[0, 1].item()
    with pytest.raises(ValueError, match=f"{key}: differs .* in 2 entries"):
        checkpoint_filter_fn({**upstream, key: corrupted}, VideoSwinConfig.nano())
    with pytest.raises(ValueError, match=f"{key}: shape \\(3, 3\\)"):
        checkpoint_filter_fn({**upstream, key: torch.zeros(3, 3, dtype=torch.int64)}, VideoSwinConfig.nano())
    with pytest.raises(ValueError, match=f"{key}: dtype torch.float32, expected an integer"):
        checkpoint_filter_fn({**upstream, key: upstream[key].float()}, VideoSwinConfig.nano())
    converted, _ = checkpoint_filter_fn({**upstream, key: upstream[key].int()}, VideoSwinConfig.nano())
    assert len(converted) == len(VideoSwinEncoder(VideoSwinConfig.nano()).state_dict())


def test_index_buffers_are_checked_against_the_configured_window():
    with pytest.raises(ValueError, match="relative_position_index: shape \\(392, 392\\), expected \\(18, 18\\)"):
        checkpoint_filter_fn(nano_upstream(), VideoSwinConfig.nano(window_size=(2, 3, 3)))


def test_unknown_missing_and_misshaped_keys_are_all_listed():
    upstream = nano_upstream()
    upstream["backbone.layers.0.blocks.0.attn.extra"] = torch.zeros(1)
    upstream["head.fc.weight"] = torch.zeros(1)
    del upstream["backbone.norm.bias"]
    upstream["backbone.layers.3.blocks.0.mlp.fc1.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError) as caught:
        checkpoint_filter_fn({"state_dict": upstream}, VideoSwinConfig.nano())
    message = str(caught.value)
    for fragment in (
        "unexpected keys (2): backbone.layers.0.blocks.0.attn.extra, head.fc.weight",
        "misshaped keys (1): backbone.layers.3.blocks.0.mlp.fc1.weight (file [4, 4], model [512, 128])",
        "missing keys (1): backbone.norm.bias",
    ):
        assert fragment in message


def test_load_official_weights_from_file(tmp_path):
    upstream = nano_upstream(seed=3)
    path = tmp_path / "swin_nano_kinetics.pth"
    torch.save({"meta": {"mmcv_version": "1.3", "CLASSES": ["a", "b"]}, "state_dict": upstream}, path)
    encoder = VideoSwinEncoder(VideoSwinConfig.nano())
    dropped = load_official_weights(encoder, path)
    assert "cls_head.fc_cls.weight" in dropped
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, upstream[key]), key


def test_load_official_weights_errors_name_the_file(tmp_path):
    encoder = VideoSwinEncoder(VideoSwinConfig.nano())
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_official_weights(encoder, tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: cannot be read"):
        load_official_weights(encoder, garbage)
    wrong = tmp_path / "wrong_config.pth"
    torch.save({"state_dict": nano_upstream()}, wrong)
    with pytest.raises(ValueError, match="wrong_config.pth: .*misshaped keys"):
        load_official_weights(VideoSwinEncoder(VideoSwinConfig.nano(embed_dim=32)), wrong)
