"""run.sh and inference.sh leave the caller's current folder alone: relative paths a user types are taken from
where the user is, not from the repository (the scripts' own defaults name the repository's folders)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recording_stub(folder: Path) -> Path:
    """An executable standing in for python / avlformer: records its working folder and arguments."""
    stub = folder / "stub"
    stub.write_text('#!/usr/bin/env bash\npwd > "$RECORD"\nprintf "%s\\n" "$@" >> "$RECORD"\n')
    stub.chmod(0o755)
    return stub


def launch(script: str, variable: str, caller: Path, *args: str) -> tuple[Path, list[str]]:
    record = caller / "record.txt"
    env = {**os.environ, variable: str(recording_stub(caller)), "RECORD": str(record)}
    done = subprocess.run(["bash", str(REPO / script), *args], cwd=caller, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    cwd, *argv = record.read_text().splitlines()
    return Path(cwd), argv


def test_run_sh_keeps_the_callers_folder_for_relative_paths(tmp_path):
    cwd, argv = launch("run.sh", "PYTHON", tmp_path, "--output_dir", "runs/a", "--data_dir", "data")
    assert cwd == tmp_path  # so runs/a is the caller's, not the repository's
    assert argv[:4] == ["-m", "avlformer.cli", "train", "--config"]
    assert Path(argv[4]) == REPO / "configs" / "favd_32frm_default.json"
    assert argv[5:] == ["--output_dir", "runs/a", "--data_dir", "data"]


def test_run_sh_passes_a_users_config_as_typed(tmp_path):
    _, argv = launch("run.sh", "PYTHON", tmp_path, "--config", "mine.json")
    assert argv[3:] == ["--config", "mine.json"]


def test_inference_sh_keeps_the_callers_folder_and_defaults_to_the_repositorys(tmp_path):
    cwd, argv = launch("inference.sh", "AVLFORMER", tmp_path, "--output", "pred.json")
    assert cwd == tmp_path
    flags = dict(zip(argv[1::2], argv[2::2]))
    assert Path(flags["--eval_model_dir"]) == REPO / "output" / "favd_default"
    assert Path(flags["--test_video_fname"]) == REPO / "datasets" / "videos" / "test"
    assert argv[-2:] == ["--output", "pred.json"]
