"""`avlformer prepare` reruns: the user's caption source wins over prepare's own outputs, unchanged clips are
reused (not decoded again), damaged work files are detected and redone."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import av
import pytest

import media_fixtures as mf
from avlformer import cli
from avlformer.data.prepare import clip_work, prepare_dataset
from avlformer.data.prepare.caption_sources import load_captions
from avlformer.data.prepare.layout import Layout
from avlformer.data.prepare.split import find_videos, plan_split

REPO = Path(__file__).resolve().parents[1]
ARGS = dict(num_frames=4, short_side=32, workers=1, progress=False)


def small_dataset(root: Path, clips) -> Path:
    for clip in clips:
        mf.write_normal(root / "videos" / "train" / f"{clip}.mp4", seconds=0.5, fps=20)
    return root


def caption_rows(root: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in (root / "metadata" / "train.caption.tsv").read_text().splitlines()]
    return {key: json.loads(payload)[0]["caption"] for key, payload in rows}


def output_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for name in ("frame_tsv", "audio_hdf", "metadata")
            for p in sorted((root / name).rglob("*")) if p.is_file()}


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Ids of the clips actually decoded (process_clip called) from now on."""
    calls: list[str] = []
    real = clip_work.process_clip
    monkeypatch.setattr(clip_work, "process_clip", lambda job: (calls.append(job.clip_id), real(job))[1])
    return calls


def test_fixing_one_caption_changes_exactly_that_clip_and_decodes_nothing(tmp_path, decoded):
    clips = ("c1", "c2", "c3")
    small_dataset(tmp_path, clips)
    captions = {clip: f"clip {clip}." for clip in clips}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    prepare_dataset(tmp_path, **ARGS)
    before, rows_before = output_bytes(tmp_path), caption_rows(tmp_path)
    assert sorted(decoded) == list(clips)

    decoded.clear()
    (tmp_path / "captions.json").write_text(json.dumps({**captions, "c2": "a fixed caption."}))
    result = prepare_dataset(tmp_path, **ARGS)
    assert result.prepared == {"train": 3} and decoded == []          # every clip reused, none decoded again
    rows_after = caption_rows(tmp_path)
    assert rows_after == {**rows_before, "train/c2.mp4": "a fixed caption."}
    after = output_bytes(tmp_path)
    changed = {name for name in before if before[name] != after[name]}
    caption_files = {f"metadata/train.{name}" for name in ("caption.tsv", "caption.lineidx", "caption.lineidx.8b",
                                                           "label.tsv", "label.lineidx", "label.lineidx.8b",
                                                           "caption_coco_format.json")}
    assert changed <= caption_files
    assert "metadata/train.caption.tsv" in changed
    assert after["frame_tsv/train_4frames.img.tsv"] == before["frame_tsv/train_4frames.img.tsv"]


def test_a_caption_added_for_a_dropped_clip_brings_it_back(tmp_path, decoded):
    small_dataset(tmp_path, ("c1", "c2"))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one."}))
    assert prepare_dataset(tmp_path, **ARGS).prepared == {"train": 1}
    decoded.clear()
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one.", "c2": "two."}))
    assert prepare_dataset(tmp_path, **ARGS).prepared == {"train": 2}
    assert decoded == ["c2"]
    assert caption_rows(tmp_path) == {"train/c1.mp4": "one.", "train/c2.mp4": "two."}


def test_released_caption_tsv_stays_the_source_after_prepare_writes_over_it(tmp_path):
    """FAVDBench layout: the user's metadata/<split>.caption.tsv is kept, and used again on a rerun."""
    small_dataset(tmp_path, ("c1", "c2"))
    released = 'train/c1.mp4\t[{"caption": "first."}]\ntrain/c2.mp4\t[{"caption": "second."}]\n'
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "train.caption.tsv").write_text(released)
    zero = mf.write_zero_byte(tmp_path / "videos" / "train" / "c2.mp4")   # broken on the first run
    assert prepare_dataset(tmp_path, **ARGS).prepared == {"train": 1}
    assert caption_rows(tmp_path) == {"train/c1.mp4": "first."}
    assert (tmp_path / "metadata" / "train.caption.released.tsv").read_text() == released
    mf.write_normal(zero, seconds=0.5, fps=20)                              # the user fixes the video
    result = prepare_dataset(tmp_path, **ARGS)
    assert result.prepared == {"train": 2} and not result.errors
    assert caption_rows(tmp_path) == {"train/c1.mp4": "first.", "train/c2.mp4": "second."}


def test_own_caption_tsv_given_as_captions_is_refused(tmp_path):
    from avlformer.data.prepare import PrepareError

    small_dataset(tmp_path, ("c1",))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one."}))
    prepare_dataset(tmp_path, **ARGS)
    with pytest.raises(PrepareError, match="written by a previous prepare"):
        prepare_dataset(tmp_path, **ARGS, captions=tmp_path / "metadata" / "train.caption.tsv")


def one_job(root: Path) -> clip_work.ClipJob:
    layout = Layout(root, "train", 4, 32)
    layout.work.mkdir(parents=True, exist_ok=True)
    return plan_split(layout, load_captions(root / "captions.json", root), find_videos(layout)[0], 1)[0][0]


@pytest.mark.parametrize("suffix", [".row", ".mp3"])
def test_damaged_work_file_is_not_trusted(tmp_path, suffix):
    small_dataset(tmp_path, ("c1",))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one."}))
    job = one_job(tmp_path)
    clip_work.process_clip(job)
    assert clip_work.load_finished(job) is not None
    path = job.work_file(suffix)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                     # truncated
    assert clip_work.load_finished(job) is None
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))          # same size, one bit flipped
    assert clip_work.load_finished(job) is None


def test_rerun_redoes_a_truncated_work_row_and_matches_a_clean_run(tmp_path, monkeypatch):
    clips = ("c1", "c2", "c3")
    for root in (tmp_path / "fresh", tmp_path / "damaged"):
        small_dataset(root, clips)
        (root / "captions.json").write_text(json.dumps({clip: f"clip {clip}." for clip in clips}))
    prepare_dataset(tmp_path / "fresh", **ARGS)

    real, calls = clip_work.process_clip, []

    def stop_after_two(job):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(job.clip_id)
        return real(job)

    monkeypatch.setattr(clip_work, "process_clip", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(tmp_path / "damaged", **ARGS)
    row = tmp_path / "damaged" / ".prepare_work" / "train-4f-32px" / f"{calls[0]}.row"
    row.write_bytes(row.read_bytes()[:100])                      # a 17-field row, as the issue found
    redone: list[str] = []
    monkeypatch.setattr(clip_work, "process_clip", lambda job: (redone.append(job.clip_id), real(job))[1])
    assert prepare_dataset(tmp_path / "damaged", **ARGS).prepared == {"train": 3}
    assert sorted(redone) == sorted({calls[0]} | set(clips) - set(calls))
    assert output_bytes(tmp_path / "damaged") == output_bytes(tmp_path / "fresh")


def no_space(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_is_not_a_clip_verdict_and_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    clips = ("c1", "c2", "c3")
    small_dataset(tmp_path, clips)
    (tmp_path / "captions.json").write_text(json.dumps({clip: f"clip {clip}." for clip in clips}))
    real = clip_work._store

    def disk_fills_at_c2(job, result, row, mp3):
        if job.clip_id == "c2":
            raise no_space(job.work_file(".row"))
        return real(job, result, row, mp3)

    monkeypatch.setattr(clip_work, "_store", disk_fills_at_c2)
    command = ["prepare", "--data-dir", str(tmp_path), "--workers", "1", "--num-frames", "4", "--image-size", "32"]
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "error" in line.lower()]   # the rest is the progress bar
    assert "Traceback" not in err and line.startswith("error: ")
    assert "No space left on device" in line and "c2.row" in line
    monkeypatch.setattr(clip_work, "_store", real)               # space freed: the rerun does c2 again
    assert cli.main(command) == 0
    assert json.loads((tmp_path / "prepare_report.json").read_text())["splits"]["train"] == \
        {"prepared": 3, "errors": 0, "warnings": 0}


def test_a_full_disk_while_writing_the_split_files_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    from avlformer.data.prepare import EnvironmentFault, split

    small_dataset(tmp_path, ("c1",))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one."}))

    def full(layout, *args):
        raise OSError(errno.ENOSPC, "Can't write data (file write failed)")   # as h5py words it, no file name

    monkeypatch.setattr(split, "assemble_split", full)
    with pytest.raises(EnvironmentFault, match=f"^{tmp_path}: no space left on the device"):
        prepare_dataset(tmp_path, **ARGS)


@pytest.mark.parametrize("fault", [av.error.PermissionError(errno.EACCES, "Permission denied"),
                                   av.error.OSError(errno.EIO, "Input/output error")])
def test_a_video_the_machine_cannot_read_is_not_judged_damaged(tmp_path, monkeypatch, fault):
    """PyAV reports both as its own errors; they must not become "not a readable video" or "truncated"."""
    from avlformer.data import media
    from avlformer.data.prepare import EnvironmentFault

    small_dataset(tmp_path, ("c1", "c2"))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one.", "c2": "two."}))
    real = media.av.open

    def unreadable_c2(path, *args, **kwargs):
        if str(path).endswith("c2.mp4"):
            raise fault
        return real(path, *args, **kwargs)

    monkeypatch.setattr(media.av, "open", unreadable_c2)
    with pytest.raises(EnvironmentFault, match=f"c2.mp4: {fault.strerror}$"):
        prepare_dataset(tmp_path, **ARGS)
    monkeypatch.setattr(media.av, "open", real)
    assert prepare_dataset(tmp_path, **ARGS).prepared == {"train": 2}


FAULT_HOOK = """
import errno, os
from avlformer.data.prepare import clip_work
_real = clip_work._store
def _store(job, result, row, mp3):
    if job.clip_id == "c2":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(job.work_file(".json")))
    return _real(job, result, row, mp3)
clip_work._store = _store
"""


def test_a_full_disk_in_a_worker_process_comes_back_through_the_pool_as_one_line(tmp_path, monkeypatch, capsys):
    """The spawned workers import the hook through sitecustomize (this process does not)."""
    clips = ("c1", "c2")
    data = small_dataset(tmp_path / "data", clips)
    (data / "captions.json").write_text(json.dumps({clip: f"clip {clip}." for clip in clips}))
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT_HOOK)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), str(REPO / "src")]))
    assert cli.main(["prepare", "--data-dir", str(data), "--workers", "2", "--num-frames", "4",
                     "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if "error" in line.lower()]
    assert "Traceback" not in err and line.startswith("error: ")
    assert "No space left on device" in line and "c2.json" in line
    assert not (data / "metadata").exists()
    monkeypatch.delenv("PYTHONPATH")
    result = prepare_dataset(data, **ARGS)                         # space freed: c2 is done, none is lost
    assert result.prepared == {"train": 2} and not result.errors
