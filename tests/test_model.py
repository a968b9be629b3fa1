"""The assembled AVLFormer on the tiny preset: AV tokens, losses, learned mask, input checks, determinism, config."""

import pytest
import torch
import torch.nn.functional as F

from avlformer.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID
from avlformer.modeling.attention_mask import build_attention_mask, mask_to_bias
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
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
    video = model.fc(model.swin(frames))
    sound = rms_norm(model.passt(audio))
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
    for enabled in (False, True):
        model.set_activation_checkpointing(enabled)
        model.train()
        model.zero_grad()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            loss = model(batch)["loss"]
        loss.backward()
        results.append((loss.item(), model.swin.backbone.patch_embed.proj.weight.grad.clone(),
                        model.trans_encoder.bert.encoder.layer[0].attention.self.query.weight.grad.clone()))
    model.set_activation_checkpointing(False)
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
