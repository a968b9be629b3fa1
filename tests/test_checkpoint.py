"""Checkpoints: our safetensors folder round trip, recipes, meta-device loading, upstream conversion, strictness,
safe loading, crafted configs, released layout."""

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import avlformer.modeling.checkpoint as checkpoint_module
from avlformer.data.recipe import PreprocessRecipe
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import (CheckpointMismatchError, checkpoint_recipe, config_from_upstream_args,
                                           convert_upstream_state_dict, load_model, save_checkpoint)
from avlformer.modeling.meta_device import build_on_meta, load_by_assignment, state_shapes
from avlformer.modeling.video_swin import relative_position_index
from tests.swin_upstream import to_upstream_state_dict

torch.set_num_threads(1)
FIXTURES = Path(__file__).parent / "fixtures"
PAPER = PreprocessRecipe.paper()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    return AVLFormer(config).eval(), config


def av_inputs(config, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(1, config.num_frames, 3, config.image_size, config.image_size, generator=generator)
    return frames, torch.randn(1, 1, config.audio.clip_samples, generator=generator) * 0.1


def convert_upstream(state_dict, config):
    """The conversion as load_model runs it: strict, against the shapes of the meta-built model."""
    return convert_upstream_state_dict(state_dict, config, True, state_shapes(build_on_meta(lambda: AVLFormer(config))))


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
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                        "preprocessor_config.json", "vocab.txt"]
    (folder / "notes.txt").write_text("hello")
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
    save_checkpoint(folder, model, config, PAPER)
    assert not (folder / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert load_model(folder / "model.safetensors")[1] == config


def test_failed_save_leaves_nothing(tiny, tmp_path, monkeypatch):
    model, config = tiny

    def fail(recipe, path):
        raise OSError(f"{path}: cannot write")

    monkeypatch.setattr(PreprocessRecipe, "save", fail)
    with pytest.raises(OSError, match="cannot write"):
        save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    assert list(tmp_path.iterdir()) == []


def test_mismatched_checkpoint_lists_every_problem(tiny, tmp_path):
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
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
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
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


def test_loading_assigns_file_tensors_without_initialising(tiny, tmp_path, monkeypatch):
    """The model is built on the meta device and takes the file's tensors: no real initialisation runs, outputs
    equal the saved model's exactly, and the computed (never stored) buffers equal a normally built model's."""
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    real_inits = []
    for name in ("normal_", "trunc_normal_", "zeros_", "ones_"):
        original = getattr(torch.nn.init, name)

        def counting(tensor, *args, _original=original, _name=name, **kwargs):
            if not tensor.is_meta:
                real_inits.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, counting)
    loaded, _ = load_model(folder)
    monkeypatch.undo()
    assert real_inits == []
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    reference_buffers = dict(model.named_buffers())
    loaded_buffers = dict(loaded.named_buffers())
    assert reference_buffers.keys() == loaded_buffers.keys() and {n.rsplit(".", 1)[-1] for n in loaded_buffers} == {
        "relative_position_index", "window", "preemphasis", "eval_filters"}
    assert all(torch.equal(reference_buffers[k], loaded_buffers[k]) for k in reference_buffers)
    assert all(p.requires_grad for p in loaded.parameters())
    frames, audio = av_inputs(config, seed=2)
    with torch.no_grad():
        assert torch.equal(model.eval().encode_av(frames, audio), loaded.eval().encode_av(frames, audio))


def test_half_precision_weights_load_into_the_declared_dtype(tiny, tmp_path):
    """As copying into a built model did: a float16 file gives float32 parameters, not a float16 model."""
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    loaded, _ = load_model(folder)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert torch.equal(loaded.fc.weight, model.fc.weight.half().float())


def test_checkpoint_recipe_round_trips(tiny, tmp_path):
    model, config = tiny
    recipe = PreprocessRecipe(stored_frames=8, short_side=64, jpeg_quality=90, clip_seconds=1.0)
    folder = save_checkpoint(tmp_path / "ckpt", model, config, recipe)
    assert checkpoint_recipe(folder) == recipe
    assert checkpoint_recipe(folder / "model.safetensors") == recipe


def test_checkpoint_without_recipe_assumes_the_paper_recipe_with_a_warning(tiny, tmp_path, caplog):
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    (folder / "preprocessor_config.json").unlink()  # as saved before recipes were recorded
    with caplog.at_level(logging.WARNING):
        assert checkpoint_recipe(folder) == PAPER
    assert "no preprocessor_config.json" in caplog.text and "assuming the paper recipe" in caplog.text
    assert str(folder) in caplog.text


def test_released_and_upstream_checkpoints_get_the_paper_recipe_silently(tmp_path, caplog):
    (tmp_path / "released").mkdir()
    (tmp_path / "released" / "model.bin").write_bytes(b"weights")
    (tmp_path / "run" / "checkpoint-1-1").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-1-1" / "model.bin").write_bytes(b"weights")
    with caplog.at_level(logging.WARNING):
        assert checkpoint_recipe(tmp_path / "released" / "model.bin") == PAPER
        assert checkpoint_recipe(tmp_path / "run" / "checkpoint-1-1") == PAPER
    assert caplog.text == ""


def test_crafted_config_with_100000_layers_fails_fast(tiny, tmp_path):
    """config.json is checked against the weights before anything is built: a huge model is never allocated
    (nor even built on the meta device, which alone would take many minutes)."""
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    data = json.loads((folder / "config.json").read_text())
    data["text"]["num_layers"] = 100_000
    (folder / "config.json").write_text(json.dumps(data))
    started = time.monotonic()
    with pytest.raises(CheckpointMismatchError) as error:
        load_model(folder)
    assert time.monotonic() - started < 20
    message = str(error.value)
    assert str(folder / "model.safetensors") in message and str(folder / "config.json") in message
    assert "does not belong to these weights" in message


def test_config_is_checked_against_the_header_before_any_tensor_is_read(tiny, tmp_path, monkeypatch):
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    data = json.loads((folder / "config.json").read_text())
    data["text"]["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(data))
    monkeypatch.setattr(checkpoint_module, "read_weights_file", lambda *a, **k: pytest.fail("tensors were read"))
    with pytest.raises(CheckpointMismatchError, match=r"model.safetensors: .*misshaped keys.*intermediate.dense"):
        load_model(folder)


def test_checkpoint_config_type_errors_name_the_file_and_field(tiny, tmp_path):
    model, config = tiny
    folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "num_frames": "many"}))
    with pytest.raises(ValueError) as error:
        load_model(folder)
    assert str(error.value) == f"{folder / 'config.json'}: num_frames must be an integer, got 'many'"


def test_upstream_args_type_errors_name_the_file_and_argument(tmp_path):
    (tmp_path / "run" / "checkpoint-1-1").mkdir(parents=True)
    (tmp_path / "run" / "log").mkdir()
    (tmp_path / "run" / "checkpoint-1-1" / "model.bin").write_bytes(b"never read")
    args_path = tmp_path / "run" / "log" / "args.json"
    for args, message in (({"max_num_frames": "lots"}, "max_num_frames must be an integer, got 'lots'"),
                          ({"learn_mask_enabled": "maybe"}, "learn_mask_enabled must be true or false"),
                          ({"lambda_": [1]}, "lambda_ must be a number, got [1]")):
        args_path.write_text(json.dumps(args))
        with pytest.raises(ValueError) as error:
            load_model(tmp_path / "run" / "checkpoint-1-1")
        assert str(error.value).startswith(f"{args_path}: {message}")


def test_checkpoint_files_get_umask_permissions(tiny, tmp_path):
    """safetensors writes 0600 files; a checkpoint's files get the permissions of every other output."""
    model, config = tiny
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(tmp_path / "ckpt", model, config, PAPER)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644) and "model.safetensors" in modes
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_a_buffer_neither_stored_nor_computed_is_an_error_after_loading():
    """A module whose non-persistent buffer has no computed_buffers() entry would keep a meta placeholder."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)
            self.register_buffer("scale", torch.ones(2), persistent=False)

    with pytest.raises(RuntimeError, match="left on the meta device.*scale"):
        load_by_assignment(build_on_meta(Scaled), Scaled().state_dict())


def test_convert_upstream_state_dict_accounts_for_every_key(tiny):
    model, config = tiny
    upstream = upstream_style(model, config)
    converted, dropped = convert_upstream(upstream, config)
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
        convert_upstream(upstream, config)
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


def released_style_state_dict(seed=0, device="cpu"):
    """Tensors with the released model.bin's names and shapes (random values, or shapes only on ``device="meta"``);
    the int64 Swin index buffers are real, since the converter checks them against a recomputation."""
    manifest = json.loads((FIXTURES / "manifest_avlformer_full.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    index = relative_position_index((8, 7, 7))
    state = {}
    for name, shape in manifest.items():
        if name.endswith("relative_position_index"):
            assert list(index.shape) == shape
            state[name] = index.clone()
        elif device == "meta":
            state[name] = torch.empty(shape, device="meta")
        else:
            state[name] = torch.empty(shape).uniform_(-0.04, 0.04, generator=generator)
    return state


def test_released_layout_fits_the_paper_model_on_meta():
    """Every released key converts and fits the paper model, and the loaded model's pieces produce the paper's
    token counts (checked on the meta device: shapes without the minute-long CPU forward)."""
    state = released_style_state_dict(device="meta")
    assert len(state) == 724
    config = AVLFormerConfig.paper()
    converted, dropped = convert_upstream(state, config)
    assert len(converted) == 724 - 34 and len(dropped) == 34  # 24 index buffers, 2 PaSST head, 2 pooler, 6 cls_img
    model = build_on_meta(lambda: AVLFormer(config)).eval()
    model.load_state_dict(converted, strict=True, assign=True)
    with torch.device("meta"):
        video = model.fc(model.swin(torch.empty(1, 32, 3, 224, 224)))
        audio = model.passt.linear(model.passt.net(torch.empty(1, 1, 128, 1000)))
        ids = torch.zeros(1, 8, dtype=torch.long)
        hidden = model.trans_encoder(ids, torch.cat([video, audio], dim=1))
        logits = model.trans_encoder.logits(hidden[:, :8])
    assert (video.shape, audio.shape) == ((1, 784, 512), (1, 473, 512))
    assert hidden.shape == (1, 8 + 1257, 768) and logits.shape == (1, 8, 30522)
    assert model.av_attention_mask().shape == (1257, 1257)


@pytest.mark.slow
def test_released_layout_loads_from_an_upstream_folder(tmp_path, caplog):
    """The one paper-size load (~309 M parameters): an upstream checkpoint folder (model.bin + ../log/args.json)
    with every released key loads strictly by assignment, with the values of the file and the paper recipe."""
    state = released_style_state_dict()
    run = tmp_path / "output"
    (run / "checkpoint-1-1").mkdir(parents=True)
    (run / "log").mkdir()
    torch.save(state, run / "checkpoint-1-1" / "model.bin")
    (run / "log" / "args.json").write_text(json.dumps({"max_num_frames": 32, "img_res": 224, "vidswin_size": "base",
                                                       "learn_mask_enabled": "True", "max_gen_length": 115}))
    probe = {k: state[k].clone() for k in ("learn_vid_att.weight", "fc.bias", "passt.net.time_new_pos_embed",
                                           "swin.backbone.layers.2.blocks.17.attn.relative_position_bias_table")}
    del state
    model, config = load_model(run / "checkpoint-1-1")
    assert config == AVLFormerConfig.paper()
    loaded = model.state_dict()
    assert len(loaded) == 724 - 34
    assert all(torch.equal(loaded[k], v) for k, v in probe.items())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert torch.equal(model.swin.backbone.layers[0].blocks[0].attn.relative_position_index,
                       relative_position_index((8, 7, 7)))
    with caplog.at_level(logging.WARNING):
        assert checkpoint_recipe(run / "checkpoint-1-1") == PAPER
    assert "assuming" not in caplog.text
