"""Training never loses a run to a fault: a used --output_dir, two trainings into one folder, a kill between the
two renames of a checkpoint swap, a full disk while a checkpoint is written."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from avlformer.atomic import atomic_folder, finish_interrupted_swaps
from avlformer.training import checkpointing as ckpt
from avlformer.training.distributed import DistEnv
from avlformer.training.flag_table import ArgumentError
from test_training_loop import checkpoint_names, run, weights

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


# ------------------------------------------------------------------------------------------- the output folder

def test_a_folder_holding_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    run(out, "--num-train-epochs", "1")
    before = {name: weights(out / name) for name in checkpoint_names(out)}
    args_json = (out / "log" / "args.json").read_bytes()

    with pytest.raises(ArgumentError) as caught:
        run(out, "--num-train-epochs", "1", "--seed", "8")
    assert str(caught.value) == (f"--output_dir {out} holds an earlier run (checkpoint-0-3, checkpoint-1-4, "
                                 f"log/args.json, ...); continue it with --resume auto, replace it with "
                                 f"--overwrite_output_dir, or choose another --output_dir")
    assert (out / "log" / "args.json").read_bytes() == args_json  # nothing of the earlier run touched
    for name, tensors in before.items():
        assert all(torch.equal(tensors[k], weights(out / name)[k]) for k in tensors)

    with pytest.raises(ArgumentError, match="give one of them"):
        run(out, "--resume", "auto", "--overwrite-output-dir")

    # --overwrite_output_dir: the folder then holds the new run only (its checkpoints at other steps)
    result = run(out, "--num-train-epochs", "1", "--save-steps", "2", "--overwrite-output-dir")
    assert checkpoint_names(out) == ["checkpoint-0-2", "checkpoint-1-4"]
    assert result.last_checkpoint == out / "checkpoint-1-4"
    assert (out / "log" / "args.json").read_bytes() != args_json


def test_a_second_training_into_the_same_folder_stops_at_once(tmp_path):
    out = tmp_path / "run"
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with ckpt.claim_output_dir(out, "", False, env):  # as a training running in another process holds it
        with pytest.raises(ArgumentError, match=f"another training is running in {out}"):
            run(out)
        assert not (out / "log").exists()
    assert run(out, "--num-train-epochs", "1").global_step == 4  # released with its holder


def test_output_dir_inside_a_checkpoint_is_refused(tmp_path):
    out = tmp_path / "first"
    run(out, "--num-train-epochs", "1")
    inside = out / "checkpoint-1-4" / "more"
    with pytest.raises(ArgumentError, match="lies inside the checkpoint folder"):
        run(inside)
    assert not inside.exists()


# ------------------------------------------------------------------------------------------- kills at a rename

KILL_AT_RENAME = """
import os, signal, sys
from pathlib import Path

real_replace, point, renames = os.replace, sys.argv[1], [0]

def replace(src, dst):  # folder renames only: files inside the staging folder are written by rename too
    if not Path(src).is_dir():
        return real_replace(src, dst)
    renames[0] += 1
    if point == f"before {renames[0]}":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if point == f"after {renames[0]}":
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
"""


def killed_at(point: str, body: str, cwd: Path) -> None:
    code = KILL_AT_RENAME + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    done = subprocess.run([sys.executable, "-c", code, point], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == -9, done.stderr  # killed where asked, not finished or failed


SWAP = """
from pathlib import Path
from avlformer.atomic import atomic_folder

with atomic_folder(Path("parent") / "{name}") as staging:
    (staging / "file.txt").write_text("new")
"""


@pytest.mark.parametrize("name", ["checkpoint-1-10", "best_checkpoint"])
@pytest.mark.parametrize("point, expected", [("before 1", "old"), ("before 2", "new"), ("after 2", "new")])
def test_a_swap_killed_at_each_rename_is_finished_or_rolled_back(tmp_path, name, point, expected):
    target = tmp_path / "parent" / name
    target.mkdir(parents=True)
    (target / "file.txt").write_text("old")
    killed_at(point, SWAP.format(name=name), tmp_path)
    if point == "before 2":
        assert not target.exists()  # the state this is about: both copies under hidden names only
    ckpt.tidy_interrupted_saves(tmp_path / "parent")
    assert (target / "file.txt").read_text() == expected
    assert sorted(p.name for p in (tmp_path / "parent").iterdir()) == [name]  # no hidden leftovers


def test_finishing_swaps_leaves_folders_it_did_not_make_alone(tmp_path):
    stranger = tmp_path / ".notes.old"
    (stranger / "keep").mkdir(parents=True)
    assert finish_interrupted_swaps(tmp_path) == []
    assert (stranger / "keep").is_dir()


TRAIN_RESUMED = """
from pathlib import Path
from test_training_loop import run

run(Path("run"), "--num-train-epochs", "1", "--resume", str(Path("run") / "checkpoint-0-3"))
"""


@pytest.mark.parametrize("point", ["before 2", "after 1"])
def test_resume_auto_after_a_kill_between_the_renames_keeps_the_newest_checkpoint(tmp_path, point, capsys):
    """checkpoint-1-4 is rewritten by a run resumed from checkpoint-0-3 and killed mid-swap; --resume auto must
    resume from checkpoint-1-4 (finished or rolled back), not delete both copies and fall back to 0-3."""
    out = tmp_path / "run"
    run(out, "--num-train-epochs", "1")
    uninterrupted = weights(out / "checkpoint-1-4")
    killed_at(point, TRAIN_RESUMED, tmp_path)
    assert not (out / "checkpoint-1-4").exists()
    capsys.readouterr()
    again = run(out, "--num-train-epochs", "1", "--resume", "auto")
    log_text = (out / "log" / "log.txt").read_text()
    assert f"resumed from {out / 'checkpoint-1-4'} at step 4" in log_text
    assert again.global_step == 4
    assert checkpoint_names(out) == ["checkpoint-0-3", "checkpoint-1-4"]
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint-")]
    restored = weights(out / "checkpoint-1-4")
    assert all(torch.equal(uninterrupted[k], restored[k]) for k in uninterrupted)  # the run is deterministic


# ------------------------------------------------------------------------------------------- a full disk

def failing_save(error: BaseException, fail_at: int):
    real_save, calls = torch.save, []

    def save(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == fail_at:
            raise error
        return real_save(obj, target, *args, **kwargs)

    return save


@pytest.mark.parametrize("error, free", [
    (OSError(errno.ENOSPC, "No space left on device"), 10 * 2**30),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 2**20),
])
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch, capsys,
                                                                               error, free):
    import argparse
    import shutil
    from collections import namedtuple

    from avlformer.training import cli as train_cli

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", failing_save(error, fail_at=2))  # the second checkpoint's training state
    usage = namedtuple("usage", "total used free")
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1, 1, free) if Path(p) == out else real_usage(p))
    with pytest.raises(ckpt.CheckpointSaveError) as caught:
        run(out, "--num-train-epochs", "1")
    message = str(caught.value)
    assert message.startswith(f"no space left on the device holding {out} ({free / 2**20:.0f} MiB free) while "
                              f"writing checkpoint-1-4; the last checkpoint {out / 'checkpoint-0-3'} is intact")
    assert "\n" not in message
    assert checkpoint_names(out) == ["checkpoint-0-3"]
    ckpt.read_training_checkpoint(out / "checkpoint-0-3")  # complete and readable
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint-")]

    def refused(*_, **__):
        raise ckpt.CheckpointSaveError(message)

    monkeypatch.setattr(train_cli, "train", refused)
    capsys.readouterr()
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.main(parser.parse_args(["--device", "cpu", "--output-dir", str(out)])) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"avlformer train: error: {message}"]


def test_a_full_disk_elsewhere_in_training_is_one_line(tmp_path, monkeypatch, capsys):
    """The best checkpoint, validation predictions or a log meeting the full disk: one line too, exit 1."""
    import argparse

    from avlformer.training import cli as train_cli

    record = tmp_path / "best_checkpoint.json"

    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device", str(record))

    monkeypatch.setattr(train_cli, "train", full)
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    assert train_cli.main(parser.parse_args(["--device", "cpu", "--output-dir", str(tmp_path)])) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"avlformer train: error: no space left on the device ({record}); free some space and rerun with --resume "
        "auto"]
