"""The Python API: AVLFormer.from_pretrained / save_pretrained / push_to_hub and avlformer.caption / Captioner.

No test touches the network: Hub ids resolve through a Hugging Face cache folder the test builds itself, sockets
are blocked while they run, and push_to_hub's upload is replaced by a recorder."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import avlformer
from avlformer import AVLFormer, Captioner, caption
from avlformer.cli import main as cli_main
from avlformer.data import audio as audio_io
from avlformer.data import media_audio
from avlformer.data.recipe import PreprocessRecipe
from avlformer.inference import pipeline
from avlformer.model_card import read_card_metadata
from avlformer.modeling import avlformer as modeling
from avlformer.modeling.avlformer import AVLFormerConfig

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402
from test_checkpoint import upstream_style  # noqa: E402

RECIPE = PreprocessRecipe(stored_frames=8, short_side=64)
SAVED_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.txt", "README.md"}
REPO_ID = "someone/tiny-avlformer"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_model(seed: int = 0) -> AVLFormer:
    torch.manual_seed(seed)
    config = AVLFormerConfig.tiny()
    config.max_gen_length = 6
    model = AVLFormer(config).eval()
    model.recipe = RECIPE
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained") / "tiny"
    tiny_model().save_pretrained(folder, model_card_kwargs={"metrics": {"CIDEr": 0.42, "Bleu_4": 0.1},
                                                            "split": "val"})
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return media_fixtures.write_normal(tmp_path_factory.mktemp("clips") / "clip.mp4")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------------- loading

def test_import_avlformer_stays_light():
    code = "import sys, avlformer; assert 'torch' not in sys.modules, 'torch imported'; print(avlformer.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert avlformer.AVLFormer is AVLFormer and avlformer.caption is caption


def test_save_pretrained_round_trip(saved):
    assert {p.name for p in saved.iterdir()} == SAVED_FILES
    model = AVLFormer.from_pretrained(saved)
    assert isinstance(model, AVLFormer) and isinstance(model, modeling.AVLFormer)
    assert not model.training
    assert same_weights(model, tiny_model())
    assert model.recipe == RECIPE
    assert model.metrics == {"CIDEr": 0.42, "Bleu_4": 0.1} and model.metrics_split == "val"
    # Saving the loaded model again keeps its card's numbers (nothing silently dropped).
    again = saved.parent / "again"
    model.save_pretrained(again)
    results = read_card_metadata(again / "README.md")["model-index"][0]["results"][0]
    assert {m["name"]: m["value"] for m in results["metrics"]} == {"CIDEr": 0.42, "BLEU-4": 0.1}


def test_save_pretrained_keeps_other_files_and_replaces_its_own(saved, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "config.json").write_text("stale")
    tiny_model(seed=1).save_pretrained(target)
    assert (target / "notes.txt").read_text() == "mine"
    assert {p.name for p in target.iterdir()} == SAVED_FILES | {"notes.txt"}  # no staging folder left
    assert same_weights(AVLFormer.from_pretrained(target), tiny_model(seed=1))


def test_released_model_bin_loads_through_from_pretrained(tmp_path, monkeypatch):
    """The released model.bin (no args.json: the paper configuration) goes through the same call; the paper
    configuration is swapped for the tiny one so that the test stays small."""
    reference = tiny_model()
    monkeypatch.setattr(modeling.AVLFormerConfig, "paper", classmethod(lambda cls: reference.config))
    path = tmp_path / "released" / "model.bin"
    path.parent.mkdir()
    torch.save(upstream_style(reference, reference.config), path)
    model = AVLFormer.from_pretrained(path)
    assert isinstance(model, AVLFormer) and same_weights(model, reference)
    assert model.recipe == PreprocessRecipe.paper()  # released checkpoints follow the paper recipe


def build_hf_cache(cache: Path, repo_id: str, files_from: Path) -> Path:
    """The layout huggingface_hub keeps: models--owner--name/{refs/main, snapshots/<commit>/<files>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for item in files_from.iterdir():
        (snapshot / item.name).write_bytes(item.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch, saved):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    build_hf_cache(cache, REPO_ID, saved)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_resolves_through_the_local_cache_offline(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder called someone/tiny-avlformer
    model = AVLFormer.from_pretrained(REPO_ID, cache_dir=offline_cache)
    assert same_weights(model, tiny_model()) and model.recipe == RECIPE
    assert model.source == REPO_ID


def test_cli_takes_a_hub_id_too(offline_cache, clip, capsys):
    assert cli_main(["caption", "--model", REPO_ID, "--device", "cpu", str(clip)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split("\t")[0] == str(clip) and line.split("\t")[1]


def test_unknown_hub_id_offline_is_a_one_line_error(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        AVLFormer.from_pretrained("someone/not-cached", cache_dir=offline_cache)
    message = str(error.value)
    assert "\n" not in message and "someone/not-cached" in message and "offline" in message
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or folder"):
        AVLFormer.from_pretrained(tmp_path / "deep" / "missing" / "folder")


def test_push_to_hub_uploads_the_save_pretrained_folder(monkeypatch):
    from huggingface_hub import HfApi

    recorded = {}

    def create_repo(self, repo_id, **kwargs):
        recorded["created"] = repo_id
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        recorded.update(repo_id=repo_id, files={p.name for p in folder.iterdir()}, kwargs=kwargs,
                        card=read_card_metadata(folder / "README.md"),
                        config=json.loads((folder / "config.json").read_text()))
        return "https://hub.example/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    model = tiny_model()
    url = model.push_to_hub(REPO_ID, model_card_kwargs={"metrics": {"CIDEr": 0.5}, "split": "val"})
    assert url == "https://hub.example/commit/1"
    assert recorded["created"] == recorded["repo_id"] == REPO_ID
    assert recorded["files"] == SAVED_FILES
    assert recorded["kwargs"]["repo_type"] == "model"
    assert recorded["config"] == model.config.to_dict()
    index = recorded["card"]["model-index"][0]
    assert index["name"] == REPO_ID
    assert index["results"][0]["metrics"][0]["value"] == 0.5
    assert index["results"][0]["dataset"]["split"] == "val"


# ----------------------------------------------------------------------------------------------------- caption

@pytest.fixture(scope="module")
def captioner(saved) -> Captioner:
    return Captioner(AVLFormer.from_pretrained(saved), device="cpu", batch_size=1)


def test_caption_matches_the_infer_pipeline(saved, clip, tmp_path):
    results = caption(AVLFormer.from_pretrained(saved), [clip, tmp_path / "missing.mp4"], device="cpu")
    assert [r.index for r in results] == [0, 1]
    loaded = pipeline.load_for_inference(saved, "cpu")
    run = pipeline.caption_videos(loaded, [clip], pipeline.checkpoint_decoding(loaded.config), progress=False)
    assert results[0].ok and results[0].caption == run.predictions[0].caption
    assert results[0].confidence == pytest.approx(run.predictions[0].confidence)
    assert results[0].audio_source == "video"
    assert not results[1].ok and results[1].caption is None and results[1].error == "no such file"


def test_caption_accepts_a_checkpoint_path_and_decoding_options(saved, clip):
    greedy, = caption(saved, [clip], device="cpu")
    beams, = caption(saved, [clip], device="cpu", num_beams=2, max_length=4)
    assert greedy.ok and beams.ok
    assert len(beams.caption.split()) <= 3  # [CLS] + at most 3 tokens
    with pytest.raises(ValueError, match="num_beams"):
        caption(saved, [clip], num_beams=0)


def test_stream_yields_each_result_when_its_batch_is_done(captioner, clip, monkeypatch):
    calls = []
    original = pipeline.caption_batch
    monkeypatch.setattr(pipeline, "caption_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    stream = captioner.stream([clip, clip, clip])
    assert isinstance(stream, types.GeneratorType) and calls == []
    first = next(stream)
    assert first.index == 0 and first.ok and len(calls) == 1  # the other two are not decoded yet
    assert [r.index for r in stream] == [1, 2] and len(calls) == 3


def decoded_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_in_memory_frames_and_waveform_follow_the_recipe(captioner, clip):
    from_file = captioner.prepare(clip)
    from_arrays = captioner.prepare(torch.from_numpy(decoded_frames(clip)), audio=np.zeros(8000, np.float32),
                                    sample_rate=16000)
    assert from_arrays.frames.shape == from_file.frames.shape
    # Same frames picked, same resize and JPEG round trip: only colour conversion order differs from decoding.
    assert from_arrays.frames.dtype == from_file.frames.dtype == torch.uint8
    assert (from_arrays.frames.float() - from_file.frames.float()).abs().mean() < 3  # pixel levels of 255
    assert from_arrays.audio_source == "array"
    assert from_arrays.audio.shape == (1, captioner.spec.clip_samples)
    # A waveform at the model's rate is the mp3 round trip the recipe prescribes, sample for sample.
    spec = captioner.spec
    wave = media_fixtures.tone(1.0, spec.sample_rate)[0]
    expected = audio_io.load_clip(media_audio.encode_mp3(wave, spec.sample_rate, spec.recipe.mp3_bitrate),
                                  clip_samples=spec.clip_samples, sample_rate=spec.sample_rate)
    assert torch.equal(captioner.prepare(decoded_frames(clip), audio=wave).audio, expected)


def test_in_memory_inputs_caption_and_report_problems(captioner, clip):
    frames = decoded_frames(clip)
    results = captioner([frames, frames.astype(np.float32)])
    assert results[0].ok and results[0].audio_source == "silence"
    assert any("silence" in w for w in results[0].warnings)
    assert not results[1].ok and "uint8" in results[1].error
    with pytest.raises(ValueError, match="2 entries for 1 videos"):
        captioner([clip], audio=[None, None])


def test_captioner_takes_a_loaded_model_and_keeps_its_recipe(saved, clip):
    loaded = pipeline.load_for_inference(saved, "cpu")
    captioner = Captioner(loaded, device="cpu")
    assert captioner.loaded.recipe == RECIPE and captioner.loaded.device == torch.device("cpu")
    assert captioner([clip])[0].ok
