"""The assembled AVLFormer on the tiny preset: AV tokens, losses, learned mask, input checks, determinism, config."""

import dataclasses
import json
import subprocess
import sys
from typing import Sequence

import pytest
import torch
import torch.nn.functional as F

from avlformer.data.token_ids import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from avlformer.modeling.attention_mask import build_attention_mask, mask_to_bias
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig, describe_model
from avlformer.modeling.passt import rms_norm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    return AVLFormer(config), config


def av_inputs(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, config.num_frames, 3, config.image_size, config.image_size, generator=generator)
    audio = torch.randn(batch, 1, config.audio.clip_samples, generator=generator) * 0.1
    return frames, audio


def text_batch(config, seed=0):
    """Two captions of different lengths, MLM-masked; targets are the original tokens."""
    generator = torch.Generator().manual_seed(seed)
    length = 12
    target = torch.randint(1000, 2000, (2, length), generator=generator)
    text_len = torch.tensor([12, 7])
    target[:, 0] = CLS_ID
    for row, n in enumerate(text_len.tolist()):
        target[row, n - 1] = SEP_ID
        target[row, n:] = PAD_ID
    masked_pos = torch.zeros(2, length, dtype=torch.bool)
    masked_pos[0, [2, 5, 11]] = True
    masked_pos[1, [1, 6]] = True
    input_ids = target.clone()
    input_ids[masked_pos] = MASK_ID
    frames, audio = av_inputs(config, seed=seed)
    return dict(frames=frames, audio=audio, input_ids=input_ids, target_ids=target, masked_pos=masked_pos,
                text_len=text_len, video_keys=["a", "b"])


def test_paper_config_token_counts():
    config = AVLFormerConfig.paper()
    assert (config.num_video_tokens, config.num_audio_tokens, config.num_av_tokens) == (784, 473, 1257)
    assert config.lm_loss_weight == 0.1 and config.sparsity_loss_weight == 0.5 and config.max_gen_length == 115


def test_encode_av_is_fc_video_then_rms_normed_audio(tiny):
    model, config = tiny
    model.eval()
    frames, audio = av_inputs(config)
    tokens = model.encode_av(frames, audio)
    assert tokens.shape == (2, config.num_av_tokens, config.img_feature_dim)
    video = model.fc(model.swin(frames))  # the released model's module names
    sound = rms_norm(model.passt.linear(model.passt(audio)))
    assert model.projection("video") is model.fc and model.projection("audio") is model.passt.linear
    assert torch.allclose(tokens[:, :config.num_video_tokens], video)
    assert torch.allclose(tokens[:, config.num_video_tokens:], sound)
    assert torch.allclose(sound.norm(dim=-1), torch.full((2, config.num_audio_tokens), config.img_feature_dim ** 0.5),
                          rtol=1e-4)


def test_losses_match_independent_computation(tiny):
    model, config = tiny
    model.eval()  # no dropout, so the reference below sees the same network
    batch = text_batch(config)
    out = model(batch)
    assert set(out) == {"loss", "lm_loss", "mlm_loss", "sparsity_loss", "mlm_accuracy"}

    av = model.encode_av(batch["frames"], batch["audio"])
    mask = build_attention_mask(batch["text_len"], 12, config.num_av_tokens, model.av_attention_mask())
    logits = model.trans_encoder.logits(model.trans_encoder(batch["input_ids"], av, mask_to_bias(mask))[:, :12])
    lm_targets = torch.cat([batch["target_ids"][:, 1:], torch.zeros(2, 1, dtype=torch.long)], dim=1)
    lm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), lm_targets.reshape(-1), ignore_index=PAD_ID)
    mlm = F.cross_entropy(logits[batch["masked_pos"]], batch["target_ids"][batch["masked_pos"]])
    weight = model.learn_vid_att.weight.view(config.num_av_tokens, config.num_av_tokens)
    off = 1 - torch.eye(config.num_av_tokens)
    sparsity = (torch.sigmoid(weight) * off).mean()
    assert out["lm_loss"].item() == pytest.approx(lm.item(), rel=1e-5)
    assert out["mlm_loss"].item() == pytest.approx(mlm.item(), rel=1e-5)
    assert out["sparsity_loss"].item() == pytest.approx(sparsity.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((0.1 * lm + 0.9 * mlm + 0.5 * sparsity).item(), rel=1e-5)
    accuracy = (logits[batch["masked_pos"]].argmax(-1) == batch["target_ids"][batch["masked_pos"]]).float().mean()
    assert out["mlm_accuracy"].item() == pytest.approx(accuracy.item())


def test_lm_targets_are_original_tokens_not_masked_ones(tiny):
    """Upstream's aliasing bug made masked positions' LM targets [MASK]; ours must use target_ids."""
    model, config = tiny
    model.eval()
    batch = text_batch(config)
    base = model(batch)["lm_loss"]
    changed = dict(batch, target_ids=batch["target_ids"].clone())
    changed["target_ids"][0, 5] = 1234  # a masked position: only target_ids changes, input_ids keeps [MASK]
    assert model(changed)["lm_loss"].item() != pytest.approx(base.item())


def test_padding_does_not_leak_into_real_positions(tiny):
    model, config = tiny
    model.eval()
    batch = text_batch(config)
    altered = dict(batch, input_ids=batch["input_ids"].clone())
    altered["input_ids"][1, 8:] = 777  # row 1 has 7 real tokens
    a, b = model(batch), model(altered)
    assert a["lm_loss"].item() == pytest.approx(b["lm_loss"].item(), rel=1e-6)
    assert a["mlm_loss"].item() == pytest.approx(b["mlm_loss"].item(), rel=1e-6)


def test_backward_reaches_every_trainable_part(tiny):
    model, config = tiny
    model.train()
    model.zero_grad()
    model(text_batch(config))["loss"].backward()
    for name in ("swin.backbone.patch_embed.proj.weight", "passt.linear.weight", "fc.weight",
                 "trans_encoder.bert.img_embedding.weight", "trans_encoder.cls.predictions.decoder.weight"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    grad = model.learn_vid_att.weight.grad.view(config.num_av_tokens, config.num_av_tokens)
    assert torch.all(grad.diagonal() == 0) and grad.abs().sum() > 0


def test_activation_checkpointing_same_loss_and_gradients(tiny, monkeypatch):
    """Same seed -> same training-mode loss and gradients with recomputation on; and it really recomputes in all
    three parts (swin stages, PaSST blocks, text layers)."""
    import avlformer.modeling.passt as passt_module
    import avlformer.modeling.text_transformer as text_module
    import avlformer.modeling.video_swin as swin_module
    calls = []
    for module in (swin_module, passt_module, text_module):
        original = module.checkpoint
        monkeypatch.setattr(module, "checkpoint",
                            lambda fn, *a, _o=original, _m=module.__name__, **k: calls.append(_m) or _o(fn, *a, **k))
    model, config = tiny
    batch = text_batch(config)
    results = []
    def set_checkpointing(enabled):  # as training sets it: config flags of the encoders, the text model's switch
        config.video.use_checkpoint = config.audio.use_checkpoint = enabled
        model.trans_encoder.set_gradient_checkpointing(enabled)

    for enabled in (False, True):
        set_checkpointing(enabled)
        model.train()
        model.zero_grad()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            loss = model(batch)["loss"]
        loss.backward()
        results.append((loss.item(), model.swin.backbone.patch_embed.proj.weight.grad.clone(),
                        model.trans_encoder.bert.encoder.layer[0].attention.self.query.weight.grad.clone()))
    set_checkpointing(False)
    model.zero_grad()
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-8)
    assert torch.allclose(results[0][2], results[1][2], rtol=1e-4, atol=1e-8)
    assert {"avlformer.modeling.video_swin", "avlformer.modeling.passt",
            "avlformer.modeling.text_transformer"} <= set(calls)
    assert config.video.use_checkpoint is False and not model.trans_encoder.bert.encoder.gradient_checkpointing


def test_eval_generation_is_deterministic(tiny):
    model, config = tiny
    frames, audio = av_inputs(config, seed=3)
    first = model.generate(frames, audio, max_length=10)
    second = model.generate(frames, audio, max_length=10)
    assert torch.equal(first.token_ids, second.token_ids)
    assert torch.equal(first.confidence, second.confidence)
    assert first.token_ids.shape == (2, 10)
    assert torch.equal(model.generate(frames, audio, max_length=10, use_cache=False).token_ids, first.token_ids)
    model.train()
    model.generate(frames, audio, max_length=3)
    assert model.training  # generate restores the mode it found


@pytest.mark.parametrize("what,change,message", [
    ("frames", lambda f: f[:, :4], r"frames: expected shape \(B, 8, 3, 64, 64\)"),
    ("frames", lambda f: f[..., :32, :32], r"frames: expected shape \(B, 8, 3, 64, 64\)"),
    ("audio", lambda a: a[..., :1000], r"audio: expected shape \(B, 1, 32000\)"),
    ("audio", lambda a: a[:, 0], r"audio: expected shape \(B, 1, 32000\)"),
])
def test_wrong_input_shapes_name_what_was_expected(tiny, what, change, message):
    model, config = tiny
    frames, audio = av_inputs(config)
    if what == "frames":
        frames = change(frames)
    else:
        audio = change(audio)
    with pytest.raises(ValueError, match=message):
        model.encode_av(frames, audio)


def test_batch_problems_are_reported(tiny):
    model, config = tiny
    batch = text_batch(config)
    with pytest.raises(KeyError, match="text_len"):
        model({k: v for k, v in batch.items() if k != "text_len"})
    with pytest.raises(ValueError, match="target_ids"):
        model(dict(batch, target_ids=batch["target_ids"][:, :5]))


def test_without_learned_mask():
    torch.manual_seed(0)
    config = AVLFormerConfig.from_dict({**AVLFormerConfig.tiny().to_dict(), "learn_mask_enabled": False})
    model = AVLFormer(config).eval()
    assert not any(name.startswith("learn_vid_att") for name in model.state_dict())
    out = model(text_batch(config))
    assert out["sparsity_loss"].item() == 0.0 and torch.isfinite(out["loss"])


def test_config_round_trip(tmp_path):
    config = AVLFormerConfig.tiny()
    config.num_beams = 3
    config.save(tmp_path / "config.json")
    loaded = AVLFormerConfig.load(tmp_path / "config.json")
    assert loaded == config and loaded.num_av_tokens == config.num_av_tokens
    assert AVLFormerConfig.from_dict(AVLFormerConfig.paper().to_dict()) == AVLFormerConfig.paper()
    with pytest.raises(ValueError, match="unknown keys"):
        AVLFormerConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="img_feature_dim"):
        AVLFormerConfig.from_dict({**config.to_dict(), "img_feature_dim": 64})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        AVLFormerConfig.load(tmp_path / "bad.json")


@pytest.mark.parametrize("size, grid", [(112, (4, 4, 4)), (160, (4, 5, 5))])
def test_frame_sizes_that_do_not_tile_build_and_train(size, grid):
    """Upstream pads frames that do not tile (docs/upstream.md §3.2); the learned mask is sized to the padded grid."""
    torch.manual_seed(0)
    config = AVLFormerConfig.from_dict({**AVLFormerConfig.tiny().to_dict(), "image_size": size})
    num_video = grid[0] * grid[1] * grid[2]
    assert config.num_video_tokens == num_video
    model = AVLFormer(config).eval()
    num_av = num_video + config.num_audio_tokens
    assert model.learn_vid_att.weight.shape == (num_av * num_av, 1)
    batch = text_batch(config)
    assert model.encode_av(batch["frames"], batch["audio"]).shape == (2, num_av, config.img_feature_dim)
    assert torch.isfinite(model(batch)["loss"])


@pytest.mark.parametrize("key, value, message", [
    ("num_frames", "many", "num_frames must be an integer, got 'many'"),
    ("num_frames", 2.5, "num_frames must be an integer, got 2.5"),
    ("num_frames", True, "num_frames must be an integer, got True"),
    ("learn_mask_enabled", 1, "learn_mask_enabled must be true or false, got 1"),
    ("length_penalty", "high", "length_penalty must be a number, got 'high'"),
    ("video", 3, "video must be an object, got 3"),
])
def test_config_file_type_errors_name_the_file_and_field(tmp_path, key, value, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**AVLFormerConfig.tiny().to_dict(), key: value}))
    with pytest.raises(ValueError) as error:
        AVLFormerConfig.load(path)
    assert str(error.value) == f"{path}: {message}"


def test_nested_config_type_errors_name_the_dotted_field(tmp_path):
    data = AVLFormerConfig.tiny().to_dict()
    data["video"]["depths"] = [1, "two", 1, 1]
    data["text"]["hidden_dropout"] = "none"
    with pytest.raises(ValueError, match=r"^text.hidden_dropout must be a number, got 'none'$"):
        AVLFormerConfig.from_dict({**data, "video": AVLFormerConfig.tiny().to_dict()["video"]})
    with pytest.raises(ValueError, match=r"^video.depths must be a list of entries that are each an integer"):
        AVLFormerConfig.from_dict(data)


def test_config_float_fields_accept_integers():
    config = AVLFormerConfig.from_dict({**AVLFormerConfig.tiny().to_dict(), "length_penalty": 2})
    assert config.length_penalty == 2


@dataclasses.dataclass
class _Example:
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    name: str | None = None
    sizes: Sequence[int] = (1, 2)
    inner: AVLFormerConfig | None = None


@pytest.mark.parametrize("data, message", [
    ({"count": "3"}, "count must be an integer, got '3'"),
    ({"ratio": False}, "ratio must be a number, got False"),
    ({"ratio": float("nan")}, "ratio must be a number, got nan"),
    ({"flag": "yes"}, "flag must be true or false, got 'yes'"),
    ({"name": 5}, "name must be a string or null, got 5"),
    ({"sizes": "12"}, "sizes must be a list, got '12'"),
    ({"sizes": [1, 2.0]}, "sizes must be a list of entries that are each an integer, got [1, 2.0]"),
    ({"inner": []}, "inner must be an object or null, got []"),
])
def test_checked_fields_type_rule(data, message):
    from avlformer.config_fields import checked_fields

    with pytest.raises(ValueError) as error:
        checked_fields(_Example, data)
    assert str(error.value) == message
    valid = {"count": 3, "ratio": 1, "flag": True, "name": None, "sizes": [3], "inner": {"num_beams": 2}}
    assert checked_fields(_Example, valid) == valid


def test_describe_model_is_computed_on_meta():
    assert describe_model(AVLFormerConfig.paper()) == (
        "AVLFormer: Swin-B, PaSST-S, 12-layer text transformer, 32 frames at 224 px: 308.8 M parameters, "
        "1235 MB fp32")
    tiny = AVLFormerConfig.tiny()
    count = sum(p.numel() for p in AVLFormer(tiny).parameters())
    assert describe_model(tiny).endswith(f"8 frames at 64 px: {count / 1e6:.1f} M parameters, "
                                         f"{count * 4 / 1e6:.0f} MB fp32")
    assert describe_model(tiny).startswith("AVLFormer: Swin-nano, PaSST-nano, 2-layer text transformer")


def test_model_import_does_not_pull_in_transformers():
    """The model needs five token ids, not the tokenizer: importing modeling must not import transformers."""
    code = ("import sys, avlformer.modeling.avlformer, avlformer.modeling.checkpoint; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
