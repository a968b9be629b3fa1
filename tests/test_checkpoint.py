"""Checkpoints: our safetensors folder round trip, upstream conversion, strictness, safe loading, released layout."""

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import (CheckpointMismatchError, config_from_upstream_args,
                                           convert_upstream_state_dict, load_model, save_checkpoint)
from avlformer.modeling.video_swin import relative_position_index, to_upstream_state_dict

torch.set_num_threads(1)
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    return AVLFormer(config).eval(), config


def av_inputs(config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(1, config.num_frames, 3, config.image_size, config.image_size, generator=generator)
    return frames, torch.randn(1, 1, config.audio.clip_samples, generator=generator) * 0.1


def upstream_style(model, config):
    """Our state dict re-expressed as upstream saved it: Swin index buffers back, plus the unused heads."""
    ours = model.state_dict()
    swin = to_upstream_state_dict({k.removeprefix("swin."): v for k, v in ours.items() if k.startswith("swin.")},
                                  config.video.window_size)
    upstream = {"swin." + k: v for k, v in swin.items()}
    upstream.update({k: v for k, v in ours.items() if not k.startswith("swin.")})
    dim, hidden = config.audio.embed_dim, config.text.hidden_size
    upstream.update({
        "passt.net.head.0.weight": torch.ones(dim), "passt.net.head.0.bias": torch.zeros(dim),
        "trans_encoder.bert.pooler.dense.weight": torch.zeros(hidden, hidden),
        "trans_encoder.bert.pooler.dense.bias": torch.zeros(hidden),
        "trans_encoder.cls_img_feat.bias": torch.zeros(2048),
        "trans_encoder.cls_img_feat.decoder.weight": torch.zeros(2048, hidden),
    })
    return upstream


def test_save_and_load_round_trip(tiny, tmp_path):
    model, config = tiny
    (tmp_path / "notes.txt").write_text("hello")
    folder = save_checkpoint(tmp_path / "ckpt", model, config, extra_files={"notes.txt": tmp_path / "notes.txt"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "notes.txt", "vocab.txt"]
    assert len((folder / "vocab.txt").read_text().splitlines()) == 30522
    assert json.loads((folder / "config.json").read_text()) == config.to_dict()
    loaded, loaded_config = load_model(folder)
    assert loaded_config == config
    expected = model.state_dict()
    got = loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    frames, audio = av_inputs(config)
    assert torch.equal(model.generate(frames, audio, max_length=8).token_ids,
                       loaded.generate(frames, audio, max_length=8).token_ids)
    # Saving again over an existing folder replaces it whole and leaves no temporary folders behind.
    save_checkpoint(folder, model, config)
    assert not (folder / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert load_model(folder / "model.safetensors")[1] == config


def test_failed_save_leaves_nothing(tiny, tmp_path):
    model, config = tiny
    with pytest.raises(FileNotFoundError):
        save_checkpoint(tmp_path / "ckpt", model, config, extra_files={"x.txt": tmp_path / "absent.txt"})
    assert list(tmp_path.iterdir()) == []


def test_mismatched_checkpoint_lists_every_problem(tiny, tmp_path):
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config)
    weights = dict(model.state_dict())
    del weights["fc.bias"]
    weights["fc.weight"] = torch.zeros(3, 3)
    weights["extra.thing"] = torch.zeros(1)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as error:
        load_model(folder)
    message = str(error.value)
    assert "model.safetensors" in message
    for needle in ("missing keys (1): fc.bias", "unexpected keys (1): extra.thing", "fc.weight (file [3, 3]"):
        assert needle in message


def test_non_strict_load_warns_but_misshaped_still_fails(tiny, tmp_path, caplog):
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config)
    weights = dict(model.state_dict())
    del weights["fc.bias"]
    save_file(weights, str(folder / "model.safetensors"))
    with caplog.at_level(logging.WARNING):
        loaded, _ = load_model(folder, strict=False)
    assert "fc.bias" in caplog.text
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    weights["fc.weight"] = torch.zeros(3, 3)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="fc.weight"):
        load_model(folder, strict=False)


def test_convert_upstream_state_dict_accounts_for_every_key(tiny):
    model, config = tiny
    upstream = upstream_style(model, config)
    converted, dropped = convert_upstream_state_dict(upstream, config)
    ours = model.state_dict()
    assert converted.keys() == ours.keys() and all(torch.equal(converted[k], ours[k]) for k in ours)
    assert len(converted) + len(dropped) == len(upstream)
    assert "passt.net.head.0.weight" in dropped and "trans_encoder.cls_img_feat.bias" in dropped
    assert "trans_encoder.bert.pooler.dense.weight" in dropped
    assert "swin.backbone.layers.0.blocks.0.attn.relative_position_index" in dropped


def test_convert_upstream_reports_missing_unexpected_and_misshaped(tiny):
    model, config = tiny
    upstream = upstream_style(model, config)
    del upstream["trans_encoder.bert.img_embedding.bias"]
    del upstream["swin.backbone.norm.weight"]
    upstream["fc.weight"] = torch.zeros(2, 2)
    upstream["passt.net.mystery"] = torch.zeros(1)
    upstream["decoder.bogus"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as error:
        convert_upstream_state_dict(upstream, config)
    message = str(error.value)
    for needle in ("trans_encoder.bert.img_embedding.bias", "backbone.norm.weight", "fc.weight", "net.mystery",
                   "decoder.bogus"):
        assert needle in message, needle


class _Payload:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    torch.save({"fc.weight": torch.zeros(1), "evil": _Payload()}, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="weights_only"):
        load_model(tmp_path / "model.bin")
    assert not (tmp_path / "pwned").exists()


def test_load_model_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "nothing")


def test_upstream_args_map_to_config():
    config = config_from_upstream_args({"max_num_frames": 16, "img_res": 224, "vidswin_size": "tiny",
                                        "kinetics": "600", "learn_mask_enabled": True, "max_gen_length": 50,
                                        "num_beams": 3, "length_penalty": 2, "lambda_": 0.5, "loss_sparse_w": 0.1,
                                        "sparse_mask_soft2hard": "true", "drop_out": 0.2,
                                        "num_hidden_layers": 6, "hidden_size": -1, "max_seq_length": 300})
    assert config.num_video_tokens == 8 * 7 * 7 and config.num_av_tokens == 8 * 7 * 7 + 473
    assert config.video.embed_dim == 96 and config.text.num_layers == 6 and config.text.hidden_size == 768
    assert (config.max_gen_length, config.num_beams, config.length_penalty) == (50, 3, 2.0)
    assert (config.lm_loss_weight, config.sparsity_loss_weight, config.sparse_mask_soft2hard) == (0.5, 0.1, True)
    assert config.text.hidden_dropout == 0.2
    with pytest.raises(ValueError, match="vidswin_size"):
        config_from_upstream_args({"vidswin_size": "huge"})


def released_style_state_dict(seed=0):
    """Random tensors with the released model.bin's names and shapes (int64 Swin index buffers, recomputed)."""
    manifest = json.loads((FIXTURES / "manifest_avlformer_full.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    index = relative_position_index((8, 7, 7))
    state = {}
    for name, shape in manifest.items():
        if name.endswith("relative_position_index"):
            assert list(index.shape) == shape
            state[name] = index.clone()
        else:
            state[name] = torch.empty(shape).uniform_(-0.04, 0.04, generator=generator)
    return state


@pytest.mark.slow
def test_released_layout_loads_and_captions(tmp_path):
    """The one paper-size test (~311 M parameters): an upstream checkpoint folder (model.bin + ../log/args.json)
    with every released key loads strictly, then runs a loss forward pass and a greedy caption on CPU."""
    state = released_style_state_dict()
    assert len(state) == 724
    run = tmp_path / "output"
    (run / "checkpoint-1-1").mkdir(parents=True)
    (run / "log").mkdir()
    torch.save(state, run / "checkpoint-1-1" / "model.bin")
    (run / "log" / "args.json").write_text(json.dumps({"max_num_frames": 32, "img_res": 224, "vidswin_size": "base",
                                                       "learn_mask_enabled": True, "max_gen_length": 115}))
    probe = {k: state[k].clone() for k in ("learn_vid_att.weight", "fc.bias", "passt.net.time_new_pos_embed")}
    del state
    model, config = load_model(run / "checkpoint-1-1")
    assert config == AVLFormerConfig.paper()
    loaded = model.state_dict()
    assert len(loaded) == 724 - 34  # 24 index buffers + 2 PaSST head + 2 pooler + 6 cls_img_feat dropped
    assert all(torch.equal(loaded[k], v) for k, v in probe.items())

    model.eval()
    frames = torch.randn(1, 32, 3, 224, 224)
    audio = torch.randn(1, 1, 320000) * 0.1
    computed = {}
    encode = model.encode_av

    def encode_once(f, a):  # the encoders are most of the CPU time: run them once for both calls below
        if "av" not in computed:
            computed["av"] = encode(f, a)
        return computed["av"]

    model.encode_av = encode_once
    ids = torch.tensor([[101, 1037, 2158, 103, 1012, 102, 0, 0]])
    with torch.no_grad():
        out = model(dict(frames=frames, audio=audio, input_ids=ids, target_ids=ids.clone(),
                         masked_pos=ids == 103, text_len=torch.tensor([6])))
    assert computed["av"].shape == (1, 1257, 512)
    assert all(torch.isfinite(v) for v in out.values())
    caption = model.generate(frames, audio, max_length=4)
    assert caption.token_ids.shape == (1, 4) and 102 in caption.token_ids[0].tolist()
