"""`avlformer train` end to end on a tiny prepared dataset (upstream layout), through the real loader."""

from __future__ import annotations

import json

import torch

from avlformer import cli
from test_data_loader import write_tiny_dataset


def test_train_command_on_prepared_data_with_loader_workers(tmp_path):
    torch.set_num_threads(1)
    yaml_path = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    status = cli.main(["train", "--model_preset", "tiny", "--data_dir", str(tmp_path / "data"),
                       "--train_yaml", "metadata/train_32frames.yaml", "--output_dir", str(out),
                       "--per_gpu_train_batch_size", "2", "--num_train_epochs", "2", "--num_workers", "1",
                       "--device", "cpu", "--max_seq_length", "24", "--max_seq_a_length", "24",
                       "--learn_mask_enabled", "--save_steps", "-1", "--logging_steps", "1"])
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
