"""Train/infer parity: the tensors inference builds from a raw clip (video + optional mp3) under a checkpoint's
recipe are identical to the tensors the evaluation loader builds from the same clip after `avlformer prepare`
with that recipe, for a non-default recipe and for the paper recipe, for every audio rule (own mp3, mp3 that must
be re-encoded, the video's audio, silence)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data.clip_ids import clip_id_from_key
from avlformer.data.dataset import CaptionDataset, DataConfig
from avlformer.data.recipe import PreprocessRecipe, recipe_for_yaml
from avlformer.inference import pipeline
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import checkpoint_recipe, save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402

# The model reads 8 frames at 64 px (tiny config); 10 s of audio as the paper recipe stores it.
LOADER = DataConfig(num_frames=8, image_size=64)
NON_DEFAULT = PreprocessRecipe(stored_frames=6, short_side=72)


def make_raw(root: Path, with_all_audio_rules: bool) -> Path:
    videos, mp3s = root / "videos" / "test", root / "audio_mp3" / "test"
    media_fixtures.write_normal(videos / "own_mp3.mp4")
    media_fixtures.write_mp3(mp3s / "own_mp3.mp3", seconds=1.0)                       # kept byte for byte
    media_fixtures.write_no_audio(videos / "silent.mkv")                               # silence
    if with_all_audio_rules:
        media_fixtures.write_stereo_44k(videos / "video_audio.mp4")                    # the video's own audio
        media_fixtures.write_normal(videos / "stereo_mp3.mp4")
        media_fixtures.write_mp3(mp3s / "stereo_mp3.mp3", sample_rate=44100, channels=2)  # re-encoded
    ids = [path.stem for path in videos.iterdir()]
    (root / "captions.json").write_text(json.dumps({cid: f"caption of {cid}." for cid in ids}))
    return root


def prepared_items(data: Path, recipe: PreprocessRecipe) -> tuple[Path, dict[str, dict]]:
    code = cli_main(["prepare", "--data-dir", str(data), "--splits", "test", "--workers", "1", "--strict",
                     "--num-frames", str(recipe.stored_frames), "--image-size", str(recipe.short_side)])
    assert code == 0
    yaml_path = data / "metadata" / f"test_{recipe.stored_frames}frames.yaml"
    dataset = CaptionDataset(yaml_path, LOADER, is_train=False)
    return yaml_path, {clip_id_from_key(item["video_key"]): item for item in (dataset[i] for i in range(len(dataset)))}


def inference_inputs(data: Path, checkpoint: Path) -> dict[str, pipeline.ClipInput]:
    """What `infer` feeds the model: the checkpoint's recipe, the model's sizes (those of the eval loader)."""
    spec = pipeline.InputSpec(num_frames=LOADER.num_frames, image_size=LOADER.image_size,
                              clip_samples=LOADER.clip_samples, sample_rate=LOADER.sample_rate,
                              recipe=checkpoint_recipe(checkpoint))
    videos = pipeline.list_videos(data / "videos" / "test").videos
    dataset = pipeline.VideoFolderDataset(videos, data / "audio_mp3" / "test", spec)
    items = [dataset[i] for i in range(len(dataset))]
    assert all(isinstance(item, pipeline.ClipInput) for item in items), items
    return {item.video_id: item for item in items}


def checkpoint_with(folder: Path, recipe: PreprocessRecipe) -> Path:
    config = AVLFormerConfig.tiny()
    return save_checkpoint(folder, AVLFormer(config), config, recipe)


def assert_identical(loader_items: dict[str, dict], inputs: dict[str, pipeline.ClipInput]) -> None:
    assert sorted(loader_items) == sorted(inputs)
    for clip_id, item in loader_items.items():
        assert torch.equal(inputs[clip_id].frames, item["frames"]), f"{clip_id}: frames differ"
        assert torch.equal(inputs[clip_id].audio, item["audio"]), f"{clip_id}: waveform differs"


@pytest.fixture(scope="module")
def non_default(tmp_path_factory) -> tuple[Path, Path, dict]:
    data = make_raw(tmp_path_factory.mktemp("non_default"), with_all_audio_rules=True)
    yaml_path, items = prepared_items(data, NON_DEFAULT)
    return data, yaml_path, items


def test_non_default_recipe_inputs_are_identical(non_default, tmp_path):
    data, _, items = non_default
    inputs = inference_inputs(data, checkpoint_with(tmp_path / "ckpt", NON_DEFAULT))
    assert {cid: clip.audio_source for cid, clip in inputs.items()} == {
        "own_mp3": "mp3", "stereo_mp3": "mp3", "video_audio": "video", "silent": "silence"}
    assert_identical(items, inputs)


def test_a_different_recipe_gives_different_inputs(non_default, tmp_path):
    """The comparison above can fail: the paper recipe's pixels differ from those of the 6-frame 72 px data."""
    data, _, items = non_default
    inputs = inference_inputs(data, checkpoint_with(tmp_path / "ckpt", PreprocessRecipe.paper()))
    assert not torch.equal(inputs["own_mp3"].frames, items["own_mp3"]["frames"])


def test_prepare_records_the_recipe_inference_uses(non_default):
    """Training copies this recipe into its checkpoints; it must be the one prepare used."""
    _, yaml_path, _ = non_default
    assert recipe_for_yaml(yaml_path) == NON_DEFAULT


def test_paper_recipe_inputs_are_identical(tmp_path):
    data = make_raw(tmp_path / "paper", with_all_audio_rules=False)
    _, items = prepared_items(data, PreprocessRecipe.paper())
    assert_identical(items, inference_inputs(data, checkpoint_with(tmp_path / "ckpt", PreprocessRecipe.paper())))
