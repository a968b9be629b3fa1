"""Two CPU processes over gloo (DDP) train to the same weights as one process with the same global batch."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from avlformer.training import loop
from avlformer.training.args import parse_train_args
from training_fakes import FakeCaptionDataset, deterministic_tiny_config, distributed_worker, tiny_model

FLAGS = ["--num-train-epochs", "2", "--learning-rate", "1e-3", "--backbone-coef-lr", "0.5", "--num-workers", "0",
         "--device", "cpu", "--logging-steps", "1", "--save-steps", "100", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    two = tmp_path / "two"
    # fork: the children inherit the imported modules (spawn would re-import torch & co. in each, slowly)
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(distributed_worker, args=(2, free_port(), FLAGS + ["--output-dir", str(two),
                                                                          "--per-gpu-train-batch-size", "2"]),
                       nprocs=2, join=True, start_method=start_method)
    one = tmp_path / "one"
    config = deterministic_tiny_config()
    args, explicit = parse_train_args(FLAGS + ["--output-dir", str(one), "--per-gpu-train-batch-size", "4"])
    torch.set_num_threads(1)
    result = loop.train(args, explicit, model=tiny_model(config),
                        train_dataset=FakeCaptionDataset(config, 8, same_caption=True))
    assert result.global_step == 4
    a = load_file(str(one / "checkpoint-2-4" / "model.safetensors"))
    b = load_file(str(two / "checkpoint-2-4" / "model.safetensors"))
    start = tiny_model(config).state_dict()
    assert any(not torch.equal(start[n], a[n]) for n in a)  # training moved the weights
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-5, msg=name)
    state = torch.load(two / "checkpoint-2-4" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
