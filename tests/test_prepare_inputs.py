"""`avlformer prepare` on bad input a new user runs into: ids a TSV cannot hold, folders and broken links named
like videos, caption errors counted per split, and two prepares on one folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import media_fixtures as mf
from avlformer import cli
from avlformer.data.prepare.layout import LOCK_NAME, prepare_lock
from avlformer.data.tsv import TSVFile

ARGS = ("--workers", "1", "--num-frames", "4", "--image-size", "32")


def run_prepare(root: Path, *extra: str) -> int:
    return cli.main(["prepare", "--data-dir", str(root), *ARGS, *extra])


def report(root: Path) -> dict:
    return json.loads((root / "prepare_report.json").read_text())


def errors(root: Path) -> dict[str, str]:
    return {p["file"]: p["reason"] for p in report(root)["problems"] if p["severity"] == "error"}


def listing(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_ids_with_a_tab_or_a_newline_are_reported_and_left_out(tmp_path):
    train = tmp_path / "videos" / "train"
    for name in ("good", "ta\tb", "nl\nx"):
        mf.write_normal(train / f"{name}.mp4", seconds=0.5, fps=20)
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one.", "ta\tb": "two.", "nl\nx": "three."}))
    assert run_prepare(tmp_path) == 0                       # the good clip is prepared (docs/data.md: exit 0)
    found = errors(tmp_path)
    assert "'\\t'" in found["videos/train/ta\tb.mp4"] and "'\\n'" in found["videos/train/nl\nx.mp4"]
    assert report(tmp_path)["splits"]["train"] == {"prepared": 1, "errors": 2, "warnings": 0}
    frames = TSVFile(tmp_path / "frame_tsv" / "train_4frames.img.tsv")
    assert frames.keys() == ["train/good.mp4"] and len(frames.row_bytes(0).split(b"\t")) == 2 + 4
    assert (tmp_path / "metadata" / "train.caption.tsv").read_text().count("\n") == 1
    assert run_prepare(tmp_path, "--strict") == 1


def test_folders_and_broken_links_named_like_videos_are_errors_naming_each(tmp_path):
    train = tmp_path / "videos" / "train"
    mf.write_normal(train / "good.mp4", seconds=0.5, fps=20)
    (train / "folder.mp4").mkdir()
    (train / "extras").mkdir()
    os.symlink(tmp_path / "nowhere.mp4", train / "gone.mp4")
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one.", "folder": "two.", "gone": "three."}))
    assert run_prepare(tmp_path) == 0
    found = errors(tmp_path)
    assert "a folder named like a video" in found["videos/train/folder.mp4"]
    assert "broken symbolic link" in found["videos/train/gone.mp4"]
    assert report(tmp_path)["splits"]["train"] == {"prepared": 1, "errors": 2, "warnings": 1}
    [warning] = [p for p in report(tmp_path)["problems"] if p["severity"] == "warning"]
    assert (warning["file"], warning["reason"]) == ("videos/train/extras", "ignored: a folder (videos/<split>/ "
                                                                           "holds video files)")


def test_caption_file_errors_count_in_their_split(tmp_path):
    mf.write_normal(tmp_path / "videos" / "train" / "good.mp4", seconds=0.5, fps=20)
    mf.write_normal(tmp_path / "videos" / "train" / "blank.mp4", seconds=0.5, fps=20)
    mf.write_normal(tmp_path / "videos" / "val" / "v1.mp4", seconds=0.5, fps=20)
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one.", "blank": " ", "v1": "val."}))
    assert run_prepare(tmp_path) == 0
    splits = report(tmp_path)["splits"]
    assert splits["train"] == {"prepared": 1, "errors": 1, "warnings": 0}
    assert splits["val"] == {"prepared": 1, "errors": 0, "warnings": 0}
    [problem] = [p for p in report(tmp_path)["problems"] if p["severity"] == "error"]
    assert (problem["file"], problem["split"], problem["id"]) == ("captions.json", "train", "blank")


def test_a_second_prepare_on_the_same_folder_stops_with_one_line(tmp_path, capsys):
    mf.write_normal(tmp_path / "videos" / "train" / "good.mp4", seconds=0.5, fps=20)
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one."}))
    before = listing(tmp_path)
    with prepare_lock(tmp_path):                            # as a prepare running in another process holds it
        assert run_prepare(tmp_path) == 2
        assert listing(tmp_path) == before | {LOCK_NAME}     # nothing written: no work files, no report
    err = capsys.readouterr().err
    assert err == f"error: another prepare is running on {tmp_path}; wait for it to finish\n"
    assert listing(tmp_path) == before                       # the lock file goes with its holder
    assert run_prepare(tmp_path) == 0 and not (tmp_path / LOCK_NAME).exists()


def test_a_split_name_that_is_a_path_is_refused_upfront(tmp_path, capsys):
    mf.write_normal(tmp_path / "videos" / "train" / "good.mp4", seconds=0.5, fps=20)
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one."}))
    before = listing(tmp_path)
    assert run_prepare(tmp_path, "--splits", "../videos/train") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'../videos/train' is not a split name" in err
    assert listing(tmp_path) == before                      # nothing written, in videos/ or anywhere


def test_an_image_size_no_frame_can_have_is_one_upfront_error(tmp_path, capsys):
    mf.write_normal(tmp_path / "videos" / "train" / "good.mp4", seconds=0.5, fps=20)
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one."}))
    assert cli.main(["prepare", "--data-dir", str(tmp_path), "--workers", "1", "--image-size", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "short_side" in err and "100000" in err
    assert not (tmp_path / "prepare_report.json").exists()


def test_a_symbolic_link_loop_is_called_a_loop_not_a_broken_link(tmp_path):
    train = tmp_path / "videos" / "train"
    mf.write_normal(train / "good.mp4", seconds=0.5, fps=20)
    os.symlink("loop.mp4", train / "loop.mp4")
    (tmp_path / "captions.json").write_text(json.dumps({"good": "one.", "loop": "two."}))
    assert run_prepare(tmp_path) == 0
    reason = errors(tmp_path)["videos/train/loop.mp4"]
    assert "symbolic link loop" in reason and "broken" not in reason


def test_csv_caption_with_unquoted_commas_is_an_error_naming_its_line(tmp_path):
    train = tmp_path / "videos" / "train"
    for clip in ("c0", "c1"):
        mf.write_normal(train / f"{clip}.mp4", seconds=0.5, fps=20)
    (tmp_path / "captions.csv").write_text('id,caption\nc0,a dog runs, then it stops, and barks\n'
                                           'c1,"a cat sleeps, then it wakes"\n')
    assert run_prepare(tmp_path) == 0
    [problem] = [p for p in report(tmp_path)["problems"] if p["severity"] == "error"]
    assert (problem["file"], problem["id"], problem["split"]) == ("captions.csv", "c0", "train")
    assert problem["reason"].startswith("line 2: 4 fields where the header has 2") and "quote" in problem["reason"]
    rows = (tmp_path / "metadata" / "train.caption.tsv").read_text().splitlines()
    assert [json.loads(row.split("\t")[1])[0]["caption"] for row in rows] == ["a cat sleeps, then it wakes"]


def test_one_id_in_two_splits_with_one_captions_file_is_a_warning_naming_both_files(tmp_path):
    mf.write_normal(tmp_path / "videos" / "train" / "c0.mp4", seconds=0.5, fps=20)
    mf.write_normal(tmp_path / "videos" / "val" / "c0.mkv", seconds=0.5, fps=20)
    (tmp_path / "captions.json").write_text(json.dumps({"c0": "one caption for two clips."}))
    assert run_prepare(tmp_path) == 0
    [warning] = [p for p in report(tmp_path)["problems"] if p["severity"] == "warning"]
    assert (warning["file"], warning["split"]) == ("videos/val/c0.mkv", "val")
    assert "videos/train/c0.mp4" in warning["reason"] and "captions.json" in warning["reason"]
    assert report(tmp_path)["splits"]["val"] == {"prepared": 1, "errors": 0, "warnings": 1}
