"""`python data_prepro/convert_h5py.py SPLIT` on bad input: files that are not mp3s are named and left out (exit
1), and a layout it cannot write into is one line before any work."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import h5py
import pytest

import media_fixtures as mf

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def convert(monkeypatch, tmp_path):
    """The script's main(argv), run in ``tmp_path`` as the repository root."""
    spec = importlib.util.spec_from_file_location("convert_h5py", REPO / "data_prepro" / "convert_h5py.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    return module.main


def test_files_that_do_not_decode_are_named_and_left_out(tmp_path, convert, capsys):
    folder = tmp_path / "datasets" / "audio_mp3" / "train"
    mf.write_mp3(folder / "good.mp3", seconds=0.3)
    (folder / "empty.mp3").write_bytes(b"")
    (folder / "notes.mp3").write_text("not audio at all\n" * 20)
    (folder / "x.mp3").mkdir()
    os.symlink("loop.mp3", folder / "loop.mp3")
    assert convert(["train"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("skipped datasets/audio_mp3/train/") for line in err)
    reasons = {Path(line.split(": ", 1)[0].removeprefix("skipped ")).name: line.split(": ", 1)[1] for line in err}
    assert reasons["empty.mp3"] == "zero-byte file" and reasons["x.mp3"] == "a folder"
    assert "symbolic link loop" in reasons["loop.mp3"] and "audio" in reasons["notes.mp3"]
    with h5py.File(tmp_path / "datasets" / "audio_hdf" / "train_mp3.hdf", "r") as hdf:
        assert [name.decode() for name in hdf["audio_name"][:]] == ["good"]


def test_an_output_folder_that_is_a_file_is_one_line_before_any_work(tmp_path, convert, capsys):
    mf.write_mp3(tmp_path / "datasets" / "audio_mp3" / "train" / "good.mp3", seconds=0.3)
    (tmp_path / "datasets" / "audio_hdf").write_text("my notes")
    assert convert(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: datasets/audio_hdf: is a file")
    assert (tmp_path / "datasets" / "audio_hdf").read_text() == "my notes"


def test_a_split_that_is_a_path_is_refused(tmp_path, convert, capsys):
    mf.write_mp3(tmp_path / "datasets" / "audio_mp3" / "train" / "good.mp3", seconds=0.3)
    assert convert(["../audio_mp3/train"]) == 2
    assert "is not a split name" in capsys.readouterr().err
    assert not (tmp_path / "datasets" / "audio_hdf").exists()
