import os
import stat

import pytest

from avlformer.atomic import atomic_path, atomic_write, write_text_atomic
from avlformer.cli import COMMANDS, main
from avlformer.flags import normalize_flag_spelling


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half written")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"], "the temp file must be cleaned up"


def test_atomic_path_for_libraries_writing_by_name(tmp_path):
    target = tmp_path / "sub" / "weights.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"abc")
        assert not target.exists(), "nothing may appear under the final name before the block ends"
    assert target.read_bytes() == b"abc"


def test_atomic_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644


def test_files_written_by_libraries_get_umask_permissions(tmp_path):
    """safetensors' save_file creates 0600 files; atomic_path and atomic_folder give them the default mode."""
    import torch
    from safetensors.torch import save_file

    from avlformer.atomic import atomic_folder

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        with atomic_folder(tmp_path / "folder") as staging:
            save_file({"w": torch.zeros(2)}, str(staging / "b.safetensors"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder" / "b.safetensors").stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "given, expected",
    [
        (["--eval_model_dir", "x"], ["--eval-model-dir", "x"]),
        (["--per_gpu_train_batch_size=2"], ["--per-gpu-train-batch-size=2"]),
        (["--lambda_", "0.1"], ["--lambda", "0.1"]),
        (["-o", "a_b", "plain_value"], ["-o", "a_b", "plain_value"]),
    ],
)
def test_flag_spellings_are_normalised(given, expected):
    assert normalize_flag_spelling(given) == expected


def test_every_command_module_has_the_cli_interface():
    import importlib

    for name, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.main), name


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_atomic_folder_swaps_whole_folders(tmp_path):
    from avlformer.atomic import atomic_folder

    target = tmp_path / "ckpt"
    with atomic_folder(target) as staging:
        (staging / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staging:
            (staging / "a.txt").write_text("v2-partial")
            raise RuntimeError("killed while saving")
    assert (target / "a.txt").read_text() == "v1", "a failed save must leave the previous folder intact"
    with atomic_folder(target) as staging:
        (staging / "b.txt").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging or retired folders left behind"


def test_output_paths_inside_a_checkpoint_are_found_through_links(tmp_path):
    from avlformer.output_paths import enclosing_checkpoint, output_file_problem, output_folder_problem

    checkpoint = tmp_path / "run" / "checkpoint-1-10"
    checkpoint.mkdir(parents=True)
    (checkpoint / "training_state.pt").write_bytes(b"")
    (tmp_path / "link").symlink_to(checkpoint)
    assert enclosing_checkpoint(tmp_path / "link" / "sub" / "x.json") == checkpoint
    assert enclosing_checkpoint(tmp_path / "run" / "x.json") is None
    assert "lies inside the checkpoint folder" in output_file_problem(tmp_path / "link" / "p.json")
    assert "lies inside the checkpoint folder" in output_folder_problem(checkpoint / "out", "--out")
    assert output_file_problem(tmp_path / "run" / "p.json") is None
    assert output_folder_problem(tmp_path / "run" / "new", "--out") is None
