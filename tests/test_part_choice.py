"""Choosing a part by name or ``hf:PATH`` (what --video-encoder, --audio-encoder and --decoder take): the kind
comes from the folder's config, every problem is a one-line error before any weight is read, and a model built
for training starts from the folder's weights."""

from __future__ import annotations

import pytest
import torch

from avlformer.modeling.avlformer import AVLFormerConfig
from avlformer.modeling.part_choice import part_from_spec
from hf_fakes import save_ast, save_causal_lm, save_clip, save_videomae
from training_fakes import deterministic_tiny_config


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    return {"videomae": save_videomae(root / "videomae"), "clip": save_clip(root / "clip"),
            "ast": save_ast(root / "ast"), "gpt2": save_causal_lm(root / "gpt2", "gpt2")}


def choose(role, spec, **options):
    tree = deterministic_tiny_config().to_dict()
    return part_from_spec(role, spec, tree[role], img_feature_dim=32, options=options)


def test_the_kind_of_an_hf_folder_picks_the_part_type(folders):
    assert choose("video", f"hf:{folders['videomae']}")["type"] == "hf_video"
    assert choose("video", f"hf:{folders['clip']}")["type"] == "hf_frames"
    audio = choose("audio", f"hf:{folders['ast']}")
    assert audio["type"] == "hf_audio" and (audio["sample_rate"], audio["clip_seconds"]) == (32000, 1.0)  # tiny's
    text = choose("text", f"hf:{folders['gpt2']}", training="lora", lora_rank=4)
    assert (text["type"], text["training"], text["lora_rank"]) == ("hf_causal_lm", "lora", 4)
    assert len(text["weights_sha256"]) == 64
    assert choose("video", "video_swin") == deterministic_tiny_config().to_dict()["video"]  # keeps its fields
    assert choose("audio", "passt")["type"] == "passt"


def test_problems_are_one_line_errors_naming_the_folder(folders, tmp_path):
    cases = [("audio", f"hf:{folders['videomae']}", "'videomae' cannot serve as an audio encoder"),
             ("video", f"hf:{folders['ast']}", "cannot serve as a video encoder"),
             ("text", f"hf:{folders['clip']}", "is not a causal language model"),
             ("text", f"hf:{tmp_path / 'absent'}", "folder not found"),
             ("video", "video_swim", "is not a registered video encoder"),
             ("text", "hf:", "give the model folder after 'hf:'")]
    for role, spec, message in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            choose(role, spec)
        assert message in str(caught.value) and "\n" not in str(caught.value), (spec, str(caught.value))
    with pytest.raises(ValueError, match="only for a Hugging Face decoder"):
        choose("text", "bert", training="lora")


def test_a_model_built_for_training_starts_from_the_folders_weights(folders, tmp_path):
    from safetensors.torch import load_file

    from avlformer.training.args import parse_train_args
    from avlformer.training.setup import build_model

    tree = deterministic_tiny_config().to_dict()
    tree["video"] = choose("video", f"hf:{folders['clip']}")
    tree["text"] = choose("text", f"hf:{folders['gpt2']}", training="frozen")
    tree["learn_mask_enabled"] = False
    config = AVLFormerConfig.from_dict(tree)
    args = parse_train_args(["--output-dir", str(tmp_path), "--device", "cpu"], model_config=config)
    model = build_model(args, torch.device("cpu"))
    stored = load_file(str(folders["gpt2"] / "model.safetensors"))
    name = "transformer.h.1.mlp.c_fc.weight"
    assert torch.equal(model.part("text").lm.state_dict()[name], stored[name])
    stored = load_file(str(folders["clip"] / "model.safetensors"))
    ours = dict(model.part("video").model.named_parameters())
    name = next(n for n in ours if n.endswith("encoder.layers.1.mlp.fc2.weight"))
    assert torch.equal(ours[name], stored["vision_model.encoder.layers.1.mlp.fc2.weight"])  # a whole CLIP's tower
    assert not any(p.requires_grad for p in model.part("text").lm.parameters())


def test_part_flags_choose_the_parts_and_the_decoder_training(folders, tmp_path):
    from avlformer.training.args import parse_train_args

    base = ["--output-dir", str(tmp_path), "--device", "cpu", "--model-preset", "tiny"]
    config = parse_train_args(base + ["--video-encoder", f"hf:{folders['clip']}", "--decoder", f"hf:{folders['gpt2']}",
                                      "--decoder-training", "lora", "--lora-rank", "4", "--lora-target-modules",
                                      "c_attn", "c_proj", "--decoder-projector", "linear"]).model
    assert (config.video.__class__.__name__, config.text.training, config.text.lora_rank) == ("HFFramesConfig",
                                                                                             "lora", 4)
    assert config.text.lora_target_modules == ["c_attn", "c_proj"] and config.text.projector == "linear"
    assert not config.learn_mask_enabled and config.audio.__class__.__name__ == "PasstConfig"
    # the weights are never read while the flags resolve: a damaged weights file does not stop them
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (damaged / name).write_bytes((folders["gpt2"] / name).read_bytes())
    (damaged / "model.safetensors").write_bytes(b"\0" * 16)
    assert parse_train_args(base + ["--decoder", f"hf:{damaged}", "--decoder-training", "frozen"]).model.text.path


def test_part_flag_problems_are_one_line_errors_naming_the_flag(folders, tmp_path):
    from avlformer.training.args import ArgumentError, parse_train_args

    base = ["--output-dir", str(tmp_path), "--device", "cpu", "--model-preset", "tiny"]
    cases = [(["--decoder", f"hf:{tmp_path / 'absent'}"], "--decoder hf:"),
             (["--audio-encoder", f"hf:{folders['clip']}"], "cannot serve as an audio encoder"),
             (["--lora-rank", "4"], "--lora-rank applies to a Hugging Face decoder only"),
             (["--video-encoder", "nope"], "is not a registered video encoder"),
             (["--video-encoder", f"hf:{folders['videomae']}", "--max-num-frames", "4"],
              "the video encoder takes 8 frames of 64 px, the model gives 4 of 64 px")]
    for flags, message in cases:
        with pytest.raises(ArgumentError) as caught:
            parse_train_args(base + flags)
        assert message in str(caught.value) and "\n" not in str(caught.value), (flags, str(caught.value))


def test_training_from_part_flags_builds_trains_and_saves_with_the_lms_tokenizer(folders, tmp_path):
    from avlformer.data.recipe import PreprocessRecipe
    from avlformer.data.tokenizer import load_tokenizer
    from avlformer.modeling.checkpoint import load_model
    from avlformer.training import loop
    from avlformer.training.args import parse_train_args
    from training_fakes import FakeCaptionDataset

    args = parse_train_args(["--output-dir", str(tmp_path / "run"), "--device", "cpu", "--model-preset", "tiny",
                             "--decoder", f"hf:{folders['gpt2']}", "--decoder-training", "lora",
                             "--per-gpu-train-batch-size", "2", "--num-train-epochs", "1", "--num-workers", "0",
                             "--save-steps", "1", "--max-seq-length", "24", "--max-gen-length", "8"])
    dataset = FakeCaptionDataset(args.model, 2, tokenizer=load_tokenizer(str(folders["gpt2"])))
    result = loop.train(args, train_dataset=dataset, recipe=PreprocessRecipe(stored_frames=8, short_side=64))
    reloaded, config = load_model(result.last_checkpoint)
    assert config.text.training == "lora" and (result.last_checkpoint / "tokenizer_config.json").is_file()
    from safetensors.torch import load_file

    stored = load_file(str(folders["gpt2"] / "model.safetensors"))  # the frozen base is the folder's
    name = "transformer.h.0.mlp.c_fc.weight"
    assert torch.equal(reloaded.part("text").lm.state_dict()[name], stored[name])


def test_a_hub_id_is_its_cached_snapshot_offline_and_a_one_line_error_when_not_cached(folders, tmp_path,
                                                                                      monkeypatch):
    import shutil

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as caught:
        choose("video", "hf:some-org/tiny-videomae")
    message = str(caught.value)
    assert "some-org/tiny-videomae: no such video encoder folder" in message and "\n" not in message
    assert "not in the local cache (HF_HUB_OFFLINE is set)" in message
    # the layout huggingface_hub writes: models--org--name/snapshots/<commit>/, refs/main naming the commit
    repo = tmp_path / "hub" / "models--some-org--tiny-videomae"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folders["videomae"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    chosen = choose("video", "hf:some-org/tiny-videomae")
    assert chosen["type"] == "hf_video" and chosen["path"] == str(repo / "snapshots" / commit)


def test_a_hub_id_online_downloads_configs_and_safetensors_only(folders, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folders["ast"])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert choose("audio", "hf:some-org/tiny-ast@v1")["path"] == str(folders["ast"])
    (repo_id, kwargs), = calls
    assert (repo_id, kwargs["revision"], kwargs["local_files_only"]) == ("some-org/tiny-ast", "v1", False)
    assert "*.safetensors" in kwargs["allow_patterns"] and not any(
        pattern.endswith((".bin", ".py", ".h5", ".msgpack")) for pattern in kwargs["allow_patterns"])
    assert choose("video", f"hf:{folders['videomae']}")["path"] == str(folders["videomae"])  # a path: no Hub
    assert len(calls) == 1


def test_an_unknown_hub_id_online_is_a_one_line_error(monkeypatch):
    import types

    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(repo_id, **kwargs):
        raise RepositoryNotFoundError(f"404 Client Error. Repository Not Found for url: {repo_id}\nmore detail",
                                      response=types.SimpleNamespace(headers={}, request=None, status_code=404))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(FileNotFoundError) as caught:
        choose("text", "hf:no-such-org/no-such-lm")
    message = str(caught.value)
    assert message.startswith("no-such-org/no-such-lm: no such decoder folder, and the Hub gives no model")
    assert "Repository Not Found" in message and "\n" not in message
