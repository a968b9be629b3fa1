"""`avlformer caption` / `avlformer infer` as a new user types them: every spelling of a path gets its caption,
every video that gets none is named with the reason (and the exit status says so), bad flags and paths are
one-line errors before any work, and decoding uses the checkpoint's own vocabulary."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from avlformer.cli import main as cli_main
from avlformer.data.recipe import PreprocessRecipe
from avlformer.inference import pipeline
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402

RECIPE = PreprocessRecipe(stored_frames=8, short_side=64)


def tiny_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    config.max_gen_length = 6
    return save_checkpoint(folder, AVLFormer(config), config, RECIPE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return media_fixtures.write_normal(tmp_path_factory.mktemp("clip") / "clip.mp4")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_every_spelling_of_a_path_gets_its_caption(checkpoint, clip, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    names = ["clip.mp4", "with space.mp4", "nön-äscii ✓.mp4", "tab\tname.mp4", "line\nbreak.mp4"]
    for name in names:
        shutil.copy(clip, work / name)
    (tmp_path / "link.mp4").symlink_to(work / "clip.mp4")
    monkeypatch.chdir(work)
    spellings = [*names, "./clip.mp4", "../work/clip.mp4", str(work / "clip.mp4"), "../link.mp4",
                 str(tmp_path / "link.mp4")]
    assert cli_main(["caption", "--model", str(checkpoint), *spellings, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(spellings)
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 2 for f in fields), lines  # tabs and line breaks in names are escaped
    assert [f[0] for f in fields] == [pipeline.display_path(s) for s in spellings]
    assert fields[3][0] == "tab\\tname.mp4" and fields[4][0] == "line\\nbreak.mp4"
    assert len({f[1] for f in fields}) == 1 and fields[0][1]  # one video, one caption, whatever the spelling


def test_caption_names_each_video_it_could_not_caption(checkpoint, clip, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    broken_link = tmp_path / "gone.mp4"
    broken_link.symlink_to(tmp_path / "missing.mp4")
    corrupt = media_fixtures.write_not_a_video(tmp_path / "corrupt.mp4")
    asked = [str(clip), str(folder), str(broken_link), str(tmp_path / "nope.mp4"), str(corrupt)]
    assert cli_main(["caption", "--model", str(checkpoint), *asked, "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(clip)]
    failed = [line for line in err.splitlines() if line.startswith("NOT CAPTIONED")]
    assert len(failed) == 4
    assert f"{folder}: is a folder" in failed[0] and "avlformer infer" in failed[0]
    assert "gone.mp4: broken symbolic link" in failed[1]
    assert "nope.mp4: no such file" in failed[2]
    assert "corrupt.mp4" in failed[3]
    assert "1 of 5 videos captioned" in err


def test_infer_reports_entries_it_cannot_caption(checkpoint, clip, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "good.mp4")
    (videos / "dangling.mp4").symlink_to(tmp_path / "missing.mp4")
    (videos / "folder.mp4").mkdir()
    shutil.copy(clip, videos / "tab\tid.mp4")
    (videos / "notes.txt").write_text("not a video, not listed")
    output = tmp_path / "pred.json"
    code = cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(videos),
                     "--output", str(output), "--device", "cpu"])
    assert code == 1
    assert [p["image_id"] for p in json.loads(output.read_text())] == ["good"]
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("NOT CAPTIONED")]
    assert len(failed) == 3, err
    assert any("dangling.mp4: broken symbolic link" in line for line in failed)
    assert any("folder.mp4: is a folder" in line for line in failed)
    assert any("tab\\tid.mp4" in line and "clip id" in line for line in failed)
    sidecar = json.loads((tmp_path / "pred.confidence.json").read_text())
    assert sorted(f["image_id"] for f in sidecar["failed"]) == ["dangling", "folder", "tab\tid"]


def test_folder_and_file_mixups_say_what_to_use(checkpoint, clip, tmp_path, capsys):
    assert cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(clip),
                     "--output", str(tmp_path / "p.json"), "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "is a file" in line and "avlformer caption" in line
    assert cli_main(["caption", "--model", str(checkpoint), str(clip.parent), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "is a folder" in err and "avlformer infer" in err


def test_infer_output_folder_is_refused_before_any_captioning(checkpoint, clip, tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("captioning started before --output was checked")

    monkeypatch.setattr(pipeline, "caption_videos", must_not_run)
    (tmp_path / "out").mkdir()
    assert cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(clip.parent),
                     "--output", str(tmp_path / "out"), "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "out: is a folder" in line


@pytest.mark.parametrize("target, message", [
    ("video", "would overwrite a file of the input folder"),
    ("audio", "would overwrite a file of the input folder"),
    ("checkpoint_config", "lies inside the checkpoint folder"),
    ("into_checkpoint", "lies inside the checkpoint folder"),
])
def test_infer_output_never_replaces_an_input_or_writes_into_the_checkpoint(checkpoint, clip, tmp_path, capsys,
                                                                           monkeypatch, target, message):
    def must_not_run(*args, **kwargs):
        raise AssertionError("captioning started before --output was checked")

    monkeypatch.setattr(pipeline, "caption_videos", must_not_run)
    videos, audio = tmp_path / "videos", tmp_path / "audio"
    videos.mkdir(), audio.mkdir()
    shutil.copyfile(clip, videos / "good.mp4")
    (audio / "good.mp3").write_bytes(b"ID3 not really")
    output = {"video": videos / "good.mp4", "audio": audio / "good.mp3", "checkpoint_config": checkpoint /
              "config.json", "into_checkpoint": checkpoint / "predictions.json"}[target]
    before = {path: path.read_bytes() for path in (videos / "good.mp4", audio / "good.mp3", checkpoint /
                                                                            "config.json")}
    status = cli_main(["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(videos),
                       "--test_audio_fname", str(audio), "--output", str(output), "--device", "cpu"])
    line = one_line(capsys.readouterr().err)
    assert status == 2
    assert line.startswith(f"avlformer infer: --output {output}: {message}")
    assert {path: path.read_bytes() for path in before} == before
    assert not (checkpoint / "predictions.json").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "--batch-size 0: must be >= 1"),
    ("--num-workers", "-1", "--num-workers -1: must be >= 0"),
    ("--device", "banana", "--device banana"),
    ("--length-penalty", "nan", "--length-penalty nan: must be a finite number"),
    ("--length-penalty", "inf", "--length-penalty inf: must be a finite number"),
    ("--num-beams", "0", "--num-beams 0: the beam width (num_beams) must be >= 1"),
    ("--max-gen-length", "1", "--max-gen-length 1: must be >= 2"),
    ("--max-gen-length", "100000", "--max-gen-length 100000: the model has only 128 text positions"),
])
@pytest.mark.parametrize("command", ["infer", "caption"])
def test_bad_flags_are_one_line_errors(checkpoint, clip, tmp_path, capsys, command, flag, value, message):
    if command == "infer":
        argv = ["infer", "--eval_model_dir", str(checkpoint), "--test_video_fname", str(clip.parent),
                "--output", str(tmp_path / "p.json")]
    else:
        argv = ["caption", "--model", str(checkpoint), str(clip)]
    assert cli_main([*argv, "--device", "cpu", flag, value]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "p.json").exists()


def test_decoding_uses_the_checkpoints_vocabulary(clip, tmp_path, capsys):
    """Every ordinary token renamed in the checkpoint's vocab.txt: the caption must consist of the new names."""
    checkpoint = tiny_checkpoint(tmp_path / "renamed_vocab")
    vocab = checkpoint / "vocab.txt"
    lines = vocab.read_text(encoding="utf-8").splitlines()
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    vocab.write_text("\n".join(line if line in special else f"tok{i}" for i, line in enumerate(lines)) + "\n",
                     encoding="utf-8")
    assert cli_main(["caption", "--model", str(checkpoint), str(clip), "--device", "cpu"]) == 0
    caption = capsys.readouterr().out.split("\t")[1].strip()
    assert caption and all(re.fullmatch(r"tok\d+", word) for word in caption.split()), caption


def test_display_path_makes_one_printable_field():
    assert pipeline.display_path("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert pipeline.display_path(os.fsdecode(b"caf\xe9.mp4")) == "caf\\xe9.mp4"
    assert pipeline.display_path("nön ✓.mp4") == "nön ✓.mp4"
