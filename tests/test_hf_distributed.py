"""A causal-LM recipe (a tiny Llama-style decoder with LoRA) trained by two CPU processes over gloo ends with the
weights of one process with the same global batch, with DDP and with FSDP2 (frozen base and trainable adapters in
one sharded unit)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from avlformer.data.tokenizer import load_tokenizer
from avlformer.modeling.avlformer import AVLFormer
from avlformer.training import loop
from avlformer.training.args import parse_train_args
from hf_fakes import causal_lm_config, save_causal_lm
from training_fakes import FakeCaptionDataset

FLAGS = ["--num-train-epochs", "1", "--learning-rate", "1e-2", "--num-workers", "0", "--device", "cpu",
         "--logging-steps", "1", "--save-steps", "2", "--seed", "3"]
FINAL = "checkpoint-1-2"


def built(folder):
    config = causal_lm_config(folder, training="lora")
    torch.manual_seed(0)
    model = AVLFormer(config)
    model.load_part_weights("text", str(folder))
    return model


def worker(rank: int, world_size: int, port: int, folder, flags: list[str]) -> None:
    from avlformer.training.distributed import init_distributed, teardown_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = built(folder)
    args = parse_train_args(flags, world_size=world_size, model_config=model.config)
    env = init_distributed("cpu")
    try:
        loop.train(args, env, model=model, train_dataset=FakeCaptionDataset(
            model.config, 8, same_caption=True, tokenizer=load_tokenizer(str(folder))))
    finally:
        teardown_distributed()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = save_causal_lm(tmp_path_factory.mktemp("lm") / "llama", "llama")
    out = tmp_path_factory.mktemp("one")
    model = built(folder)
    torch.set_num_threads(1)
    args = parse_train_args(FLAGS + ["--output-dir", str(out), "--per-gpu-train-batch-size", "4"],
                            model_config=model.config)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    loop.train(args, model=model, train_dataset=FakeCaptionDataset(model.config, 8, same_caption=True,
                                                                    tokenizer=load_tokenizer(str(folder))))
    weights = load_file(str(out / FINAL / "model.safetensors"))
    assert any(not torch.equal(before[n], weights[n]) for n in weights if "lora_" in n)  # the adapters moved
    return folder, weights


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one_process(tmp_path, setup, strategy):
    folder, expected = setup
    flags = FLAGS + ["--output-dir", str(tmp_path), "--per-gpu-train-batch-size", "2", "--distributed-strategy",
                     strategy]
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(worker, args=(2, free_port(), folder, flags), nprocs=2, join=True, start_method=start_method)
    actual = load_file(str(tmp_path / FINAL / "model.safetensors"))
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=2e-5, msg=name)
