"""`avlformer prepare` and the PyAV media helpers: bad input, report, resume, and the upstream file formats."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

import media_fixtures as mf
from avlformer import cli
from avlformer.data import media, media_audio
from avlformer.data.clip_media import silent_clip_audio
from avlformer.data.prepare import clip_work
from avlformer.data.prepare.caption_sources import load_captions
from avlformer.data.prepare.layout import Layout
from avlformer.data.prepare.split import find_videos, plan_split
from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tsv import TSVFile, lineidx_8b_path, lineidx_path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def run_prepare(data_dir: Path, *extra: str) -> int:
    return cli.main(["prepare", "--data-dir", str(data_dir), "--workers", "1", *extra])


def read_report(data_dir: Path) -> dict:
    return json.loads((data_dir / "prepare_report.json").read_text())


def problems_for(report: dict, needle: str) -> list[dict]:
    return [p for p in report["problems"] if needle in p["file"]]


# ----------------------------------------------------------------------------------------------------------------
# media.py
# ----------------------------------------------------------------------------------------------------------------

def test_sample_frames_picks_the_frame_on_screen_at_segment_centres(tmp_path):
    path = mf.write_normal(tmp_path / "a.mp4", seconds=1.0, fps=40)
    frames = media.read_frames(path, num_frames=32, short_side=96).frames
    assert frames.dtype == np.uint8 and frames.shape == (32, 96, 128, 3)
    for k in range(32):
        source = int((k + 0.5) * 40 / 32)  # frame on screen at (k + 0.5) * D / n
        level = int(frames[k, -5:, -5:].mean())
        assert abs(level - mf.frame_level(source, 40)) <= 3, (k, source, level)


def test_variable_frame_rate_is_detected_and_sampled_by_timestamp(tmp_path):
    path = mf.write_vfr(tmp_path / "v.mp4")
    info = media.probe(path)
    assert info.variable_frame_rate
    assert not media.probe(mf.write_normal(tmp_path / "n.mp4")).variable_frame_rate
    sample = media.read_frames(path, 16, 64)
    times = info.frame_times
    for k, target in enumerate(media.sample_times(info.start, info.duration, 16)):
        source = int(np.searchsorted(times, target, side="right")) - 1
        assert abs(int(sample.frames[k, -4:, -4:].mean()) - mf.frame_level(source, len(times))) <= 3


def test_rotation_metadata_is_applied_like_ffmpeg(tmp_path):
    frames = media.read_frames(mf.write_rotated(tmp_path / "r.mp4", 90), 4, 64).frames
    assert frames.shape[1:] == (85, 64, 3)          # 64x48 landscape displayed as 48x64 portrait
    # The white marker, top-left in the coded picture, is bottom-left after a 90-degree counter-clockwise turn.
    assert frames[0, -3:, :3].mean() > 240 and frames[0, :3, :3].mean() < 200


def test_short_clip_repeats_frames_and_counts_them(tmp_path):
    sample = media.read_frames(mf.write_short(tmp_path / "s.mp4"), 32, 64)
    assert sample.frames.shape[0] == 32 and sample.num_distinct == 8


def test_audio_is_mono_32k_mp3_and_missing_audio_is_an_exception_subtype(tmp_path):
    track = media_audio.extract_audio(mf.write_stereo_44k(tmp_path / "st.mp4"))
    info = media_audio.inspect_mp3(track.mp3, "x")
    assert (info.sample_rate, info.channels) == (32000, 1)
    assert (track.source_rate, track.source_channels) == (44100, 2)
    assert abs(info.duration - 1.0) < 0.1
    with pytest.raises(media.NoAudioStreamError, match="no audio stream"):
        media_audio.extract_audio(mf.write_no_audio(tmp_path / "n.mp4"))
    silence = media_audio.inspect_mp3(silent_clip_audio(PreprocessRecipe(clip_seconds=2.0)).mp3, "s")
    assert abs(silence.duration - 2.0) < 0.1 and silence.sample_rate == 32000


@pytest.mark.parametrize("writer,reason", [(mf.write_zero_byte, "zero-byte"),
                                           (mf.write_not_a_video, "not a readable video"),
                                           (mf.write_truncated, "not a readable video")])
def test_unreadable_files_raise_media_error_naming_the_file(tmp_path, writer, reason):
    path = writer(tmp_path / "bad.mp4")
    with pytest.raises(media.MediaError, match=reason) as caught:
        media.read_frames(path)
    assert str(path) in str(caught.value)


# ----------------------------------------------------------------------------------------------------------------
# A dataset with every kind of bad input, prepared once
# ----------------------------------------------------------------------------------------------------------------

GOOD_TRAIN = ["a-1", "a", "a_b", "mp3clip", "noaudio", "portrait", "tiny", "vfr", "trunc", "shortaudio",
              "longaudio", "stereo"]


def build_messy_dataset(root: Path) -> Path:
    train, val = root / "videos" / "train", root / "videos" / "val"
    mf.write_normal(train / "a.mp4")
    mf.write_normal(train / "a-1.mp4")               # sorts before "a" as "a-1.mp3" < "a.mp3" (upstream order)
    mf.write_normal(train / "a_b.mkv")
    mf.write_normal(train / "mp3clip.mp4")
    mf.write_mp3(root / "audio_mp3" / "train" / "mp3clip.mp3", seconds=1.0)
    mf.write_no_audio(train / "noaudio.mp4")
    mf.write_portrait(train / "portrait.mp4")
    mf.write_tiny(train / "tiny.mp4")
    mf.write_vfr(train / "vfr.mp4")
    mf.write_truncated(train / "trunc.mkv", 0.5)      # mkv: the first half still decodes
    mf.write_audio_mismatch(train / "shortaudio.mp4", 0.3)
    mf.write_audio_mismatch(train / "longaudio.mp4", 2.5)
    mf.write_stereo_44k(train / "stereo.mov")
    mf.write_zero_byte(train / "zero.mp4")
    mf.write_truncated(train / "cut.mp4", 0.5)        # mp4 without its index: unreadable
    mf.write_not_a_video(train / "text.mp4")
    mf.write_normal(train / "dup.mp4")
    mf.write_normal(train / "dup.mkv")
    mf.write_normal(train / "nocaption.mp4")
    mf.write_normal(train / "emptycap.mp4")
    mf.write_normal(train / "latin1.mp4")
    (train / "notes.txt").write_text("not a video extension")
    mf.write_short(val / "short.webm")
    captions = {clip: f"A caption for {clip}. The sound is a tone." for clip in
                GOOD_TRAIN + ["zero", "cut", "text", "dup", "short", "orphan"]}
    captions["emptycap"] = "   "
    body = json.dumps(captions)[:-1] + ', "latin1": "caf\xe9"}'
    (root / "captions.json").write_bytes(body.encode("latin-1"))  # one caption that is not UTF-8
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = build_messy_dataset(tmp_path_factory.mktemp("messy"))
    code = run_prepare(root)
    return root, code, read_report(root)


def test_bad_input_never_stops_the_run_and_every_case_is_reported(messy):
    root, code, report = messy
    assert code == 0
    assert report["splits"]["train"]["prepared"] == len(GOOD_TRAIN)
    assert report["splits"]["val"]["prepared"] == 1
    expected = {
        "videos/train/zero.mp4": ("error", "zero-byte"),
        "videos/train/cut.mp4": ("error", "not a readable video"),
        "videos/train/text.mp4": ("error", "not a readable video"),
        "videos/train/dup.mp4": ("error", "duplicate id"),
        "videos/train/dup.mkv": ("error", "duplicate id"),
        "videos/train/nocaption.mp4": ("error", "no caption"),
        "videos/train/noaudio.mp4": ("warning", "silence"),
        "videos/train/portrait.mp4": ("warning", "portrait"),
        "videos/train/tiny.mp4": ("warning", "low resolution 32x24"),
        "videos/train/vfr.mp4": ("warning", "variable frame rate"),
        "videos/train/trunc.mkv": ("warning", "truncated"),
        "videos/train/shortaudio.mp4": ("warning", "shorter than the video"),
        "videos/train/longaudio.mp4": ("warning", "longer than the video"),
        "videos/train/notes.txt": ("warning", "not one of"),
        "videos/val/short.webm": ("warning", "only 8 distinct decodable frame"),
    }
    for file, (severity, reason) in expected.items():
        found = [p for p in report["problems"] if p["file"] == file and p["severity"] == severity
                 and reason in p["reason"]]
        assert found, (file, severity, reason, problems_for(report, file))
    caption_problems = {p["id"]: p["reason"] for p in report["problems"] if p["file"] == "captions.json"}
    assert "no video" in caption_problems["orphan"]
    assert "empty" in caption_problems["emptycap"]
    assert "not valid UTF-8" in caption_problems["latin1"]
    # Good clips with nothing wrong are not reported at all.
    assert not [p for p in report["problems"] if p["file"] == "videos/train/a.mp4" and p["severity"] == "error"]


def test_strict_turns_errors_into_a_non_zero_exit(tmp_path):
    mf.write_normal(tmp_path / "videos" / "train" / "good.mp4")
    mf.write_zero_byte(tmp_path / "videos" / "train" / "bad.mp4")
    (tmp_path / "captions.csv").write_text("id,caption\ngood,a red ball.\nbad,a blue cube.\n")
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4") == 0
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4", "--strict") == 1
    errors = [p for p in read_report(tmp_path)["problems"] if p["severity"] == "error"]
    assert [(p["file"], p["reason"]) for p in errors] == [("videos/train/bad.mp4", "zero-byte file")]
    # Removing the bad clip leaves its caption without a video, itself an error: remove both. (A rerun reads
    # captions.csv, never the caption TSV the first run wrote without 'bad'.)
    (tmp_path / "videos" / "train" / "bad.mp4").unlink()
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4", "--strict") == 1
    assert "'bad' has no video" in read_report(tmp_path)["problems"][0]["reason"]
    (tmp_path / "captions.csv").write_text("id,caption\ngood,a red ball.\n")
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4", "--strict") == 0


# ----------------------------------------------------------------------------------------------------------------
# Upstream formats, byte level
# ----------------------------------------------------------------------------------------------------------------

def test_frame_tsv_rows_are_upstream_format(messy):
    root, _, _ = messy
    tsv_path = root / "frame_tsv" / "train_32frames.img.tsv"
    lines = tsv_path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    offsets = np.cumsum([0] + [len(line) + 1 for line in lines[:-2]])
    assert lineidx_path(tsv_path).read_text() == "".join(f"{o}\n" for o in offsets)
    assert np.array_equal(np.fromfile(lineidx_8b_path(tsv_path), dtype="<u8"), offsets)
    for line in lines[:-1]:
        fields = line.split(b"\t")
        assert len(fields) == 34
        images = [Image.open(io.BytesIO(base64.b64decode(field, validate=True))) for field in fields[2:]]
        assert {image.format for image in images} == {"JPEG"}
        width, height = images[-1].size
        assert min(width, height) == 256 and all(image.size == (width, height) for image in images)
        assert fields[1] == f'{{"class": -1, "width": {width}, "height": {height}}}'.encode()


def test_rows_of_every_file_describe_the_same_clip_in_upstream_order(messy):
    root, _, _ = messy
    meta = root / "metadata"
    caption_rows = [line.split("\t") for line in (meta / "train.caption.tsv").read_text().splitlines()]
    keys = [key for key, _ in caption_rows]
    ids = [Path(key).name[:-4] for key in keys]                  # upstream's own key -> audio name rule
    assert ids == sorted(GOOD_TRAIN, key=lambda clip: clip + ".mp3") and ids[:2] == ["a-1", "a"]
    assert TSVFile(root / "frame_tsv" / "train_32frames.img.tsv").keys() == keys
    with h5py.File(root / "audio_hdf" / "train_mp3.hdf", "r") as hdf:
        assert h5py.check_string_dtype(hdf["audio_name"].dtype) is not None
        assert h5py.check_vlen_dtype(hdf["mp3"].dtype) == np.dtype("uint8")
        assert [name.decode() for name in hdf["audio_name"][:]] == ids
        stored = {name.decode(): bytes(blob) for name, blob in zip(hdf["audio_name"][:], hdf["mp3"][:])}
    # Given mp3s are stored byte for byte; every stored blob is a mono 32 kHz mp3.
    assert stored["mp3clip"] == (root / "audio_mp3" / "train" / "mp3clip.mp3").read_bytes()
    for clip, blob in stored.items():
        info = media_audio.inspect_mp3(blob, clip)
        assert (info.sample_rate, info.channels) == (32000, 1)
    assert abs(media_audio.inspect_mp3(stored["noaudio"], "n").duration - 10.0) < 0.1
    assert [json.loads(payload)[0]["caption"] for _, payload in caption_rows] == \
        [f"A caption for {clip}. The sound is a tone." for clip in ids]
    assert (meta / "train.label.tsv").read_text() == (meta / "train.caption.tsv").read_text()
    assert (meta / "train.caption.linelist.tsv").read_text() == "".join(f"{i}\t0\n" for i in range(len(ids)))
    img_rows = [line.split("\t") for line in (meta / "train.img.tsv").read_text().splitlines()]
    assert [key for key, _ in img_rows] == keys and all((root / path).is_file() for _, path in img_rows)


def test_webm_keys_keep_the_four_character_suffix_upstream_strips(messy):
    root, _, _ = messy
    key = (root / "metadata" / "val.caption.tsv").read_text().split("\t")[0]
    assert key == "val/short.mp4"


def test_yaml_paths_resolve_as_upstream_resolves_them(messy):
    root, _, _ = messy
    yaml_path = root / "metadata" / "train_32frames.yaml"
    config = yaml.safe_load(yaml_path.read_text())
    assert set(config) == {"caption", "caption_coco_format", "caption_linelist", "img", "label", "audio"}
    data_root = yaml_path.parent.parent                           # upstream: parent of the yaml's folder
    assert (data_root / config["img"]).is_file() and (data_root / config["audio"]).is_file()
    assert config["audio"] == "audio_hdf/train_mp3.hdf"
    for name in ("caption", "caption_coco_format", "caption_linelist", "label"):
        assert (data_root / "metadata" / config[name]).is_file(), name


def test_coco_references_structure(messy):
    root, _, _ = messy
    coco = json.loads((root / "metadata" / "train.caption_coco_format.json").read_text())
    keys = [line.split("\t")[0] for line in (root / "metadata" / "train.caption.tsv").read_text().splitlines()]
    assert (coco["type"], coco["info"], coco["licenses"]) == ("captions", "dummy", "dummy")
    assert [image["id"] for image in coco["images"]] == keys
    assert [image["file_name"] for image in coco["images"]] == keys
    assert [a["image_id"] for a in coco["annotations"]] == keys
    assert [a["id"] for a in coco["annotations"]] == list(range(len(keys)))
    assert all(a["caption"].startswith("A caption for ") for a in coco["annotations"])


def test_work_folder_is_removed_after_success(messy):
    root, _, _ = messy
    assert not any((root / ".prepare_work").glob("*/*"))


# ----------------------------------------------------------------------------------------------------------------
# Custom inputs
# ----------------------------------------------------------------------------------------------------------------

def small_dataset(root: Path, clips=("c1", "c2", "c3", "c4"), split="train") -> Path:
    for clip in clips:
        mf.write_normal(root / "videos" / split / f"{clip}.mp4", seconds=0.5, fps=20)
    return root


def test_csv_captions_with_quotes_commas_and_a_test_split(tmp_path):
    small_dataset(tmp_path, ("c1", "c2"))
    small_dataset(tmp_path, ("t1",), split="test")
    (tmp_path / "captions.csv").write_text(
        'id,caption\nc1,"A dog, a cat. It says ""woof""."\nc2,Two birds.\nt1,A test clip.\n', encoding="utf-8")
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4") == 0
    rows = (tmp_path / "metadata" / "train.caption.tsv").read_text().splitlines()
    assert json.loads(rows[0].split("\t")[1]) == [{"caption": 'A dog, a cat. It says "woof".'}]
    assert (tmp_path / "metadata" / "test_4frames.yaml").is_file()
    assert not [p for p in read_report(tmp_path)["problems"] if p["severity"] == "error"]


def test_released_caption_tsv_and_explicit_captions_flag(tmp_path):
    small_dataset(tmp_path, ("c1", "c2"))
    (tmp_path / "metadata").mkdir()
    (tmp_path / "metadata" / "train.caption.tsv").write_text(
        'train/c2.mp4\t[{"caption": "second."}]\ntrain/c1.mp4\t[{"caption": "first."}]\n')
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4") == 0
    rows = (tmp_path / "metadata" / "train.caption.tsv").read_text().splitlines()
    assert rows == ['train/c1.mp4\t[{"caption": "first."}]', 'train/c2.mp4\t[{"caption": "second."}]']
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"c1": "one.", "c2": "two."}))
    assert cli.main(["prepare", "--data_dir", str(tmp_path), "--captions", str(other), "--workers", "1",
                     "--image_size", "32", "--num_frames", "4"]) == 0
    assert "one." in (tmp_path / "metadata" / "train.caption.tsv").read_text()


def test_already_prepared_splits_need_no_videos(tmp_path, capsys):
    small_dataset(tmp_path, ("c1",))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one."}))
    assert run_prepare(tmp_path, "--image-size", "32", "--num-frames", "4") == 0
    shutil.rmtree(tmp_path / "videos")                     # as with the released processed files
    assert run_prepare(tmp_path, "--num-frames", "4") == 0
    assert "already prepared" in capsys.readouterr().out
    assert run_prepare(tmp_path, "--num-frames", "32") == 1   # nothing prepared for 32 frames, no videos


def test_unparseable_captions_file_is_a_clear_error(tmp_path, capsys):
    small_dataset(tmp_path, ("c1",))
    (tmp_path / "captions.json").write_text("{not json")
    assert run_prepare(tmp_path) == 2
    assert "captions.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------------

def output_bytes(root: Path) -> dict[str, bytes]:
    names = ["frame_tsv", "audio_hdf", "metadata"]
    return {str(p.relative_to(root)): p.read_bytes() for name in names for p in sorted((root / name).rglob("*"))
            if p.is_file()}


def test_interrupted_run_resumes_without_redoing_finished_clips(tmp_path, monkeypatch):
    clips = ("c1", "c2", "c3", "c4", "c5")
    for root in (tmp_path / "fresh", tmp_path / "resumed"):
        small_dataset(root, clips)
        (root / "captions.json").write_text(json.dumps({clip: f"clip {clip}." for clip in clips}))
    args = ("--image-size", "32", "--num-frames", "4")
    assert run_prepare(tmp_path / "fresh", *args) == 0

    real = clip_work.process_clip
    calls: list[str] = []

    def crash_after_two(job):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, between two clips
        calls.append(job.clip_id)
        return real(job)

    monkeypatch.setattr(clip_work, "process_clip", crash_after_two)
    assert run_prepare(tmp_path / "resumed", *args) == 130
    assert not (tmp_path / "resumed" / "frame_tsv").exists()      # nothing final was written
    first = list(calls)

    calls.clear()
    monkeypatch.setattr(clip_work, "process_clip", lambda job: (calls.append(job.clip_id), real(job))[1])
    assert run_prepare(tmp_path / "resumed", *args) == 0
    assert sorted(first + calls) == list(clips) and not set(first) & set(calls)
    assert output_bytes(tmp_path / "resumed") == output_bytes(tmp_path / "fresh")


def test_changed_input_is_processed_again(tmp_path, monkeypatch):
    small_dataset(tmp_path, ("c1", "c2"))
    (tmp_path / "captions.json").write_text(json.dumps({"c1": "one.", "c2": "two."}))
    layout = Layout(tmp_path, "train", 4, 32)
    job = plan_split(layout, load_captions(tmp_path / "captions.json", tmp_path), find_videos(layout)[0], 1)[0][0]
    layout.work.mkdir(parents=True)
    clip_work.process_clip(job)
    assert clip_work.load_finished(job) is not None
    mf.write_normal(Path(job.video), seconds=0.7, fps=20)
    os.utime(job.video, ns=(1, 1))
    assert clip_work.load_finished(job) is None


def test_killed_worker_pool_run_resumes(tmp_path):
    """A real process, two workers, killed mid-run; the rerun completes and matches a clean run."""
    clips = [f"k{i}" for i in range(8)]
    for root in (tmp_path / "fresh", tmp_path / "killed"):
        small_dataset(root, clips)
        (root / "captions.json").write_text(json.dumps({clip: f"clip {clip}." for clip in clips}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [PYTHON, "-m", "avlformer.cli", "prepare", "--image-size", "32", "--num-frames", "4", "--workers", "2"]
    subprocess.run(command + ["--data-dir", str(tmp_path / "fresh")], env=env, check=True, capture_output=True)
    process = subprocess.Popen(command + ["--data-dir", str(tmp_path / "killed")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / "killed" / ".prepare_work" / "train-4f-32px"
    while process.poll() is None and len(list(work.glob("*.json"))) < 2:
        time.sleep(0.02)
    process.kill()
    process.wait()
    subprocess.run(command + ["--data-dir", str(tmp_path / "killed")], env=env, check=True, capture_output=True)
    assert output_bytes(tmp_path / "killed") == output_bytes(tmp_path / "fresh")


# ----------------------------------------------------------------------------------------------------------------
# Upstream wrapper scripts
# ----------------------------------------------------------------------------------------------------------------

def test_run_sh_prepares_datasets_folder(tmp_path):
    small_dataset(tmp_path / "datasets", ("c1", "c2"))
    (tmp_path / "datasets" / "captions.json").write_text(json.dumps({"c1": "one.", "c2": "two."}))
    env = {**os.environ, "PYTHON": PYTHON}
    result = subprocess.run(["bash", str(REPO / "data_prepro" / "run.sh"), "--workers", "1", "--num_frames", "4",
                             "--image_size", "32"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "datasets" / "metadata" / "train_4frames.yaml").is_file()


def test_convert_h5py_packs_sorted_raw_mp3s_at_the_correct_path(tmp_path):
    folder = tmp_path / "datasets" / "audio_mp3" / "val"
    for name in ("b", "a-1", "a"):
        mf.write_mp3(folder / f"{name}.mp3", seconds=0.3)
    result = subprocess.run([PYTHON, str(REPO / "data_prepro" / "convert_h5py.py"), "val"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "datasets" / "audio_hdf" / "val_mp3.hdf", "r") as hdf:
        names = [name.decode() for name in hdf["audio_name"][:]]
        assert names == ["a-1", "a", "b"]
        for name, blob in zip(names, hdf["mp3"][:]):
            assert bytes(blob) == (folder / f"{name}.mp3").read_bytes()


def test_prepared_split_loads_in_the_caption_dataset(messy):
    """The project's loader (which follows upstream's reader and its key/audio-name assert) reads every row."""
    from avlformer.data.dataset import CaptionDataset, DataConfig

    root, _, _ = messy
    dataset = CaptionDataset(root / "metadata" / "train_32frames.yaml", DataConfig(image_size=224), is_train=False)
    assert len(dataset) == len(GOOD_TRAIN)
    item = dataset[len(dataset) - 1]
    assert tuple(item["frames"].shape) == (32, 3, 224, 224) and tuple(item["audio"].shape) == (1, 320000)
    assert item["caption"] == f"A caption for {Path(item['video_key']).stem}. The sound is a tone."
