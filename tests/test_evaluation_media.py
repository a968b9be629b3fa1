"""AudioScore/CLIPScore media follow a preprocessing recipe: `evaluate --recipe` (a checkpoint folder or a
preprocessor_config.json) decides frames and audio exactly as `prepare` and inference make them."""

from __future__ import annotations

import numpy as np
import pytest

from avlformer.data.audio import decode_audio
from avlformer.data.clip_media import clip_audio, read_clip_frames
from avlformer.data.recipe import RECIPE_NAME, PreprocessRecipe
from avlformer.evaluation.cli import main as evaluate_main
from avlformer.evaluation.runner import load_recipe
from avlformer.evaluation.runner import ClipMedia
from tests.media_fixtures import write_mp3, write_normal


@pytest.fixture
def clip_folders(tmp_path):
    videos, audio = tmp_path / "videos", tmp_path / "audio"
    videos.mkdir()
    audio.mkdir()
    write_normal(videos / "abc.mp4")
    write_mp3(audio / "abc.mp3", sample_rate=44100, channels=2)  # must be re-encoded by the recipe's rule
    return videos, audio


def test_media_are_made_by_the_recipe(clip_folders):
    videos, audio = clip_folders
    recipe = PreprocessRecipe(stored_frames=5, short_side=40)
    media = ClipMedia(videos, audio, recipe=recipe)
    frames = media.frames("test/abc.mp4")
    assert frames.shape[0] == 5 and min(frames.shape[1:3]) == 40
    assert np.array_equal(frames, read_clip_frames(videos / "abc.mp4", recipe).frames)
    expected = decode_audio(clip_audio(videos / "abc.mp4", audio / "abc.mp3", recipe).mp3, recipe.sample_rate)
    assert np.array_equal(media.audio("abc"), expected)
    # The paper recipe gives other pixels: the recipe is really used.
    assert min(ClipMedia(videos, audio).frames("abc").shape[1:3]) == 256


def test_num_frames_overrides_only_the_frame_count(clip_folders):
    videos, audio = clip_folders
    media = ClipMedia(videos, audio, recipe=PreprocessRecipe(short_side=40), num_frames=3)
    assert media.frames("abc").shape[:1] == (3,) and min(media.frames("abc").shape[1:3]) == 40


def test_recipe_comes_from_a_checkpoint_folder_or_a_file(tmp_path):
    recipe = PreprocessRecipe(stored_frames=6, short_side=72)
    recipe.save(tmp_path / RECIPE_NAME)
    assert load_recipe(str(tmp_path)) == recipe  # a folder: read as a checkpoint's recipe
    assert load_recipe(str(tmp_path / RECIPE_NAME)) == recipe
    assert load_recipe(None) == PreprocessRecipe.paper()


def test_a_bad_recipe_is_a_one_line_error_before_any_metric(tmp_path, capsys):
    pred, ref = tmp_path / "pred.json", tmp_path / "ref.json"
    pred.write_text('[{"image_id": "a", "caption": "a red circle"}]')
    ref.write_text('[{"image_id": "a", "caption": "a red circle"}]')
    bad = tmp_path / "recipe.json"
    bad.write_text('{"stored_frames": "many"}')
    code = evaluate_main_args(pred, ref, "--recipe", str(bad))
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}: stored_frames must be an integer, got 'many'"


def evaluate_main_args(pred, ref, *extra) -> int:
    import argparse

    from avlformer.evaluation.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return evaluate_main(parser.parse_args(["--pred", str(pred), "--ref", str(ref), "--metrics", "bleu", *extra]))


def test_a_clip_without_audio_is_not_scored_on_silence(tmp_path):
    from avlformer.data.media import MediaError
    from tests.media_fixtures import write_no_audio

    write_no_audio(tmp_path / "quiet.mp4")
    with pytest.raises(MediaError, match="no usable audio"):
        ClipMedia(tmp_path).audio("quiet")
