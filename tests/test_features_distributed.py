"""`train --features` under two gloo processes: DDP and FSDP2 (its own unit layout for cached features, with
validation decoding raw videos through the sharded frozen encoders) train to the same weights, and the encoders in
the checkpoint are the frozen ones."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
from test_features import RECIPE, extract, feature_workspace, train_flags  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def feature_worker(rank: int, world_size: int, port: int, flags: list[str]) -> None:
    """One process of a gloo run, as torchrun starts it (environment variables)."""
    from avlformer.training.args import parse_train_args
    from avlformer.training.distributed import init_distributed, teardown_distributed
    from avlformer.training.loop import train

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    args = parse_train_args(flags, world_size=world_size)
    env = init_distributed("cpu")
    try:
        train(args, env)
    finally:
        teardown_distributed()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = feature_workspace(tmp_path_factory.mktemp("features_ddp"))
    # The same clips serve as validation: decoding them runs the frozen encoders under FSDP.
    yaml_path = ws["yaml"]
    (yaml_path.parent / "val_32frames.yaml").write_text(yaml_path.read_text())
    RECIPE.save(yaml_path.with_name("val_32frames.preprocessor_config.json"))
    ws["features"] = ws["root"] / "features"
    assert extract(ws, ws["features"]) == 0
    return ws


def train_two(ws, output: Path, *extra: str) -> dict:
    from safetensors.torch import load_file

    flags = [*train_flags(ws, output), "--features", str(ws["features"]), "--pretrained-checkpoint",
             str(ws["checkpoint"]), *extra]
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(feature_worker, args=(2, free_port(), flags), nprocs=2, join=True, start_method=start_method)
    folders = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return load_file(folders[-1] / "model.safetensors"), folders[-1]


def test_fsdp_on_features_trains_like_ddp_and_validates_through_the_frozen_encoders(workspace, tmp_path):
    from safetensors.torch import load_file

    ddp, _ = train_two(workspace, tmp_path / "ddp")
    fsdp, folder = train_two(workspace, tmp_path / "fsdp", "--distributed-strategy", "fsdp",
                             "--evaluate-during-training", "--val-yaml", "metadata/val_32frames.yaml")
    start = load_file(workspace["checkpoint"] / "model.safetensors")
    assert set(fsdp) == set(ddp) == set(start)
    assert not torch.equal(fsdp["fc.weight"], start["fc.weight"])  # it trained
    for name in ("swin.backbone.norm.weight", "passt.net.norm.weight"):
        assert torch.equal(fsdp[name], start[name])  # frozen, gathered whole into the checkpoint
    for name, value in ddp.items():
        torch.testing.assert_close(fsdp[name], value, rtol=1e-5, atol=1e-6, msg=name)
    predictions = list(folder.glob("pred.*val_32frames*.json"))
    assert predictions, sorted(p.name for p in folder.iterdir())
