"""`avlformer train` end to end on a tiny prepared dataset (upstream layout), through the real loader."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from avlformer import cli
from avlformer.data.recipe import RECIPE_NAME, PreprocessRecipe, recipe_path_for_yaml
from avlformer.training.checkpointing import TRAINING_STATE
from test_data_loader import write_tiny_dataset

# The tiny dataset's frames: 8 per clip, 40 px on the shorter side; anything but the paper recipe.
TINY_RECIPE = PreprocessRecipe(stored_frames=8, short_side=40, jpeg_quality=90)


def write_tiny_training_data(root):
    """The tiny dataset, prepared with TINY_RECIPE; returns its training yaml."""
    yaml_path = write_tiny_dataset(root)
    TINY_RECIPE.save(recipe_path_for_yaml(yaml_path))
    return yaml_path


def train_flags(data_dir, out, *extra):
    return ["train", "--model_preset", "tiny", "--data_dir", str(data_dir),
            "--train_yaml", "metadata/train_32frames.yaml", "--output_dir", str(out),
            "--per_gpu_train_batch_size", "2", "--device", "cpu", "--max_seq_length", "24",
            "--max_seq_a_length", "24", "--learn_mask_enabled", *extra]


def test_train_command_on_prepared_data_with_loader_workers(tmp_path):
    torch.set_num_threads(1)
    yaml_path = write_tiny_training_data(tmp_path / "data")
    out = tmp_path / "out"
    status = cli.main(train_flags(tmp_path / "data", out, "--num_train_epochs", "2", "--num_workers", "1",
                                  "--save_steps", "-1", "--logging_steps", "1"))
    assert status == 0
    assert yaml_path.is_file()
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    steps_per_epoch = json.loads((out / "log" / "args.json").read_text())["global_iters_per_epoch"]
    # --save_steps -1: one checkpoint per epoch
    assert checkpoints == [f"checkpoint-1-{steps_per_epoch}", f"checkpoint-2-{2 * steps_per_epoch}"]
    config = json.loads((out / checkpoints[-1] / "config.json").read_text())
    assert config["num_frames"] == 8 and config["max_seq_length"] == 24  # tiny preset + explicit flag
    args = json.loads((out / "log" / "args.json").read_text())
    assert args["max_num_frames"] == 8 and args["attn_mask_type"] == "learn_vid_att"
    for name in checkpoints:  # the recipe of the data trained on travels with every checkpoint
        assert PreprocessRecipe.load(out / name / RECIPE_NAME) == TINY_RECIPE


def test_max_steps_sets_the_schedule_and_stops_inside_an_epoch(tmp_path):
    torch.set_num_threads(1)
    write_tiny_training_data(tmp_path / "data")
    out = tmp_path / "out"
    status = cli.main(train_flags(tmp_path / "data", out, "--num_train_epochs", "9", "--max_steps", "4",
                                  "--save_steps", "1", "--warmup_ratio", "0", "--learning_rate", "1e-3",
                                  "--backbone_coef_lr", "1", "--num_workers", "0",
                                  "--per_gpu_train_batch_size", "1"))
    assert status == 0
    args = json.loads((out / "log" / "args.json").read_text())
    assert args["global_iters_per_epoch"] == 3 and args["max_global_step"] == 4  # one step into the second epoch
    names = ["checkpoint-0-1", "checkpoint-0-2", "checkpoint-1-3", "checkpoint-1-4"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == names
    rates = [torch.load(out / name / TRAINING_STATE, weights_only=True)["scheduler"]["_last_lr"][0] for name in names]
    assert rates == pytest.approx([7.5e-4, 5e-4, 2.5e-4, 1e-8])  # a linear decay that ends at the fourth step


def test_validation_data_prepared_with_another_recipe_is_an_error(tmp_path, capsys):
    yaml_path = write_tiny_training_data(tmp_path / "data")
    val_yaml = yaml_path.with_name("val_32frames.yaml")
    shutil.copyfile(yaml_path, val_yaml)
    PreprocessRecipe(stored_frames=8, short_side=64, jpeg_quality=90).save(recipe_path_for_yaml(val_yaml))
    out = tmp_path / "out"
    status = cli.main(train_flags(tmp_path / "data", out, "--evaluate_during_training", "--num_workers", "0"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith(f"avlformer train: error: {val_yaml}: the validation data was prepared with another "
                              "recipe than the training data (short_side 64 (training data: 40))")
    assert not [p for p in out.iterdir() if p.name.startswith("checkpoint-")]


def test_train_without_tensorboard_is_a_one_line_error_naming_the_extra(monkeypatch):
    import builtins

    from avlformer.training.flag_table import ArgumentError
    from avlformer.training.setup import summary_writer

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ArgumentError, match=r"pip install 'avlformer\[train\]'"):
        summary_writer(None)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, workers", [("frame_tsv", 0), ("audio_hdf5", 0), ("audio_hdf5", 1), ("yaml", 0)])
def test_damaged_data_files_are_one_line_naming_the_file(tmp_path, capsys, damage, workers):
    """Also when a loader worker meets the damage (its error arrives wrapped in the worker's traceback)."""
    yaml_path = write_tiny_training_data(tmp_path / "data")
    data = tmp_path / "data"
    damaged = {"frame_tsv": data / "frame_tsv" / "train_32frames.img.tsv",
               "audio_hdf5": data / "audio_hdf" / "train_mp3.hdf", "yaml": yaml_path}[damage]
    if damage == "yaml":
        damaged.write_text("caption: [unclosed\n  : : :\n")
    else:
        _truncate(damaged)
    status = cli.main(train_flags(data, tmp_path / "out", "--num_workers", str(workers)))
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert status == 2
    assert len(err) == 1, err
    assert err[0].startswith("avlformer train: error: ") and damaged.name in err[0]


def _weights_files(folder):
    """A corrupt file, a pickle that would run code, a safetensors file whose header lies about its size."""
    import os
    import struct

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {folder / 'ran'}",)

    corrupt = folder / "corrupt.pth"
    corrupt.write_bytes(bytes(range(256)) * 8)
    malicious = folder / "malicious.pth"
    torch.save({"state_dict": RunsCode()}, malicious)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}).encode()
    lying = folder / "lying.safetensors"
    lying.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return {"corrupt": corrupt, "malicious": malicious, "lying": lying}


@pytest.mark.parametrize("flag", ["--swin_checkpoint", "--passt_checkpoint", "--pretrained_checkpoint"])
def test_unusable_weight_files_are_one_line_naming_the_file(tmp_path, capsys, flag):
    write_tiny_training_data(tmp_path / "data")
    for kind, path in _weights_files(tmp_path).items():
        if flag == "--pretrained_checkpoint" and kind == "lying":
            from avlformer.modeling.avlformer import AVLFormerConfig

            status = cli.main(train_flags(tmp_path / "data", tmp_path / "out_alone", "--num_workers", "0", flag,
                                          str(path)))
            err = capsys.readouterr().err.strip().splitlines()
            assert status == 2 and err[-1] == (f"avlformer train: error: {path}: weights without their config.json "
                                               f"(expected beside them, in {tmp_path})")

            # Ours: the weights with config.json beside them; the header promises tensors the file does not hold.
            (tmp_path / "config.json").write_text(json.dumps(AVLFormerConfig.tiny().to_dict()))
        status = cli.main(train_flags(tmp_path / "data", tmp_path / f"out_{kind}", "--num_workers", "0", flag,
                                      str(path)))
        err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line
               and " WARNING " not in line]
        assert status == 2, kind
        assert len(err) == 1, (kind, err)
        assert err[0].startswith(f"avlformer train: error: {path}"), (kind, err)
    assert not (tmp_path / "ran").exists()
