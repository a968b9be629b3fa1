"""Two CPU processes over gloo train to the same weights as one process with the same global batch: DDP, and
FSDP2 (with validation decoding and an exact resume)."""

from __future__ import annotations

import json
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from avlformer.training import loop, trainer
from avlformer.training.args import parse_train_args
from training_fakes import FakeCaptionDataset, deterministic_tiny_config, distributed_worker, tiny_model

FLAGS = ["--num-train-epochs", "2", "--learning-rate", "1e-3", "--backbone-coef-lr", "0.5", "--num-workers", "0",
         "--device", "cpu", "--logging-steps", "1", "--save-steps", "2", "--seed", "3"]
FINAL = "checkpoint-2-4"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two(output_dir, *extra, val_size=0):
    # fork: the children inherit the imported modules (spawn would re-import torch & co. in each, slowly)
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    flags = FLAGS + ["--output-dir", str(output_dir), "--per-gpu-train-batch-size", "2", *extra]
    mp.start_processes(distributed_worker, args=(2, free_port(), flags, val_size), nprocs=2, join=True,
                       start_method=start_method)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    config = deterministic_tiny_config()
    args = parse_train_args(FLAGS + ["--output-dir", str(out), "--per-gpu-train-batch-size", "4"],
                            model_config=config)
    torch.set_num_threads(1)
    result = loop.train(args, model=tiny_model(config),
                        train_dataset=FakeCaptionDataset(config, 8, same_caption=True))
    assert result.global_step == 4
    weights = load_file(str(out / FINAL / "model.safetensors"))
    start = tiny_model(config).state_dict()
    assert any(not torch.equal(start[n], weights[n]) for n in weights)  # training moved the weights
    return weights


def assert_same_weights(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=2e-5, msg=name)


def test_ddp_two_gloo_processes_match_one_process(tmp_path, one_process):
    launch_two(tmp_path)
    assert_same_weights(load_file(str(tmp_path / FINAL / "model.safetensors")), one_process)
    state = torch.load(tmp_path / FINAL / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_fsdp_matches_one_process_validates_and_resumes_exactly(tmp_path, one_process, monkeypatch):
    monkeypatch.setattr(trainer, "score", lambda predictions, references: ({"CIDEr": float(len(predictions))}, None))
    launch_two(tmp_path, "--distributed-strategy", "fsdp", "--evaluate-during-training", val_size=3)
    final = load_file(str(tmp_path / FINAL / "model.safetensors"))
    assert_same_weights(final, one_process)
    predictions = json.loads((tmp_path / FINAL / "pred.metadata.val_32frames.beam1.max8_coco_format.json").read_text())
    assert len(predictions) == 3  # both shards gathered, the padded repeat removed

    shutil.rmtree(tmp_path / FINAL)
    launch_two(tmp_path, "--distributed-strategy", "fsdp", "--resume", "auto")
    resumed = load_file(str(tmp_path / FINAL / "model.safetensors"))
    for name in final:
        assert torch.equal(resumed[name], final[name]), name
