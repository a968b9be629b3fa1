"""Frozen Hugging Face encoders through the commands: ``avlformer extract-features --video-encoder hf:... 
--audio-encoder hf:...`` caches what each part's own forward (its own preprocessing) gives on the prepared clips,
and ``train --features`` with the same flags trains exactly as end-to-end training with those encoders frozen:
the same tensors arrive, the same first-step loss, the same weights after."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data.dataset import CaptionDataset, collate
from avlformer.data.features import FeatureFile, feature_path
from avlformer.data.tokenizer import load_tokenizer
from avlformer.modeling.avlformer import AVLFormer
from avlformer.training.args import parse_train_args
from avlformer.training.loop import train
from avlformer.training.setup import build_datasets, data_config_for
from hf_fakes import save_ast, save_clip, save_videomae, save_whisper
from training_fakes import deterministic_tiny_config

sys.path.insert(0, str(Path(__file__).parent))
from test_data_loader import write_tiny_dataset  # noqa: E402
from test_features import RECIPE, EvalMediaDataset, last_weights, train_flags  # noqa: E402

PAIRS = {"videomae-ast": ("videomae", "ast"), "clip-whisper": ("clip", "whisper")}
SAVERS = {"videomae": save_videomae, "clip": save_clip, "ast": save_ast, "whisper": save_whisper}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_features")
    data = root / "datasets"
    yaml_path = write_tiny_dataset(data)
    RECIPE.save(yaml_path.with_name(yaml_path.stem + ".preprocessor_config.json"))
    model_config = root / "model.json"
    deterministic_tiny_config().save(model_config)
    folders = {name: save(root / name) for name, save in SAVERS.items()}
    return {"data": data, "yaml": yaml_path, "model_config": model_config, "folders": folders}


@pytest.mark.parametrize("pair", PAIRS)
def test_extract_and_train_from_hf_features_equals_end_to_end_with_frozen_hf_encoders(workspace, tmp_path, pair,
                                                                                     capsys):
    ws = workspace
    video, audio = PAIRS[pair]
    parts = ["--video-encoder", f"hf:{ws['folders'][video]}", "--audio-encoder", f"hf:{ws['folders'][audio]}"]
    out = tmp_path / "features"
    assert cli_main(["extract-features", "--data-dir", str(ws["data"]), "--model-config", str(ws["model_config"]),
                     *parts, "--out", str(out), "--precision", "fp32", "--num-workers", "0",
                     "--batch-size", "2"]) == 0
    assert "train: 3 clips (3 computed now" in capsys.readouterr().out
    cached = FeatureFile(feature_path(out, ws["yaml"]))

    # What arrives: the cache holds each part's own forward on the clips as inference prepares them.
    config = parse_train_args([*train_flags(ws, tmp_path / "e2e"), *parts, "--freeze-backbone", "--freeze-passt"])
    assert (config.model.video.path, config.model.audio.path) == (str(ws["folders"][video]),
                                                                   str(ws["folders"][audio]))
    model = AVLFormer(config.model).eval()
    for role in ("video", "audio"):
        model.load_part_weights(role, getattr(config.model, role).path)
    start = model.state_dict()
    clips = CaptionDataset(ws["yaml"], data_config_for(config), is_train=False)
    batch = collate([clips[row] for row in range(len(clips))])
    with torch.no_grad():
        want_video, want_audio = model.encoder_outputs(batch["frames"], batch["audio"])
    got = [cached.clip(cached.row_of[key]) for key in batch["video_keys"]]
    assert want_video.shape[1:] == (model.config.num_video_tokens, model.config.video.token_width)
    torch.testing.assert_close(torch.stack([v for v, _ in got]), want_video, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.stack([a for _, a in got]), want_audio, rtol=1e-6, atol=1e-6)

    # train --features (the command) against end-to-end training with the encoders frozen (by the flags), the
    # model built by the same command path from the same seed
    assert cli_main(["train", *train_flags(ws, tmp_path / "cached"), *parts, "--features", str(out)]) == 0
    raw = build_datasets(config, load_tokenizer())[0]
    train(config, train_dataset=EvalMediaDataset(raw.paths.yaml, raw.config, True, load_tokenizer()))

    first = {name: _scalars(tmp_path / name / "log")["train/loss"] for name in ("cached", "e2e")}
    assert len(first["cached"]) == len(first["e2e"]) == 6  # 3 clips x 2 epochs, batch 1
    assert first["cached"][0] == pytest.approx(first["e2e"][0], rel=1e-6, abs=1e-6)
    from_features, end_to_end = last_weights(tmp_path / "cached"), last_weights(tmp_path / "e2e")
    assert not torch.equal(from_features["fc.weight"], start["fc.weight"])  # it trained
    for name in ("video.model.", "audio.model."):  # the HF encoders stayed as loaded, and are in the file
        names = [n for n in start if n.startswith(name)]
        assert names and all(torch.equal(from_features[n], start[n]) for n in names)
    for name, value in end_to_end.items():
        torch.testing.assert_close(from_features[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_extract_features_names_the_encoder_without_weights(workspace, tmp_path, capsys):
    ws = workspace
    code = cli_main(["extract-features", "--data-dir", str(ws["data"]), "--model-config", str(ws["model_config"]),
                     "--video-encoder", f"hf:{ws['folders']['videomae']}", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()  # found before any weight is read
    assert code == 2 and len(err) == 1 and "no weights for the audio encoder" in err[0], err
    code = cli_main(["extract-features", "--data-dir", str(ws["data"]), "--model-config", str(ws["model_config"]),
                     "--video-encoder", f"hf:{ws['folders']['ast']}", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [err[0]] and "--video-encoder" in err[0] and "cannot serve as a video encoder" in err[0]


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
