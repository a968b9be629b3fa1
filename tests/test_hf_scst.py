"""Self-critical training with a causal-LM decoder (``text.type hf_causal_lm``): captions are sampled through the
LM's own cache (cached and uncached draws agree), scored by one forward of the LM that equals its own
log-softmax on the sampled ids, and ``train --scst`` with LoRA moves the adapters (and the parts meant to
train) only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tokenizer import load_tokenizer
from avlformer.modeling.avlformer import AVLFormer
from avlformer.modeling.sampling import caption_logprobs, sample_captions
from avlformer.training import loop
from avlformer.training.args import parse_train_args
from hf_fakes import causal_lm_config, save_causal_lm
from training_fakes import ReferencedDataset

MAX_LENGTH = 10


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return save_causal_lm(tmp_path_factory.mktemp("lm") / "llama", "llama")


def lora_model(folder, seed: int = 0) -> AVLFormer:
    torch.manual_seed(seed)
    model = AVLFormer(causal_lm_config(folder, training="lora", lora_target_modules=["q_proj", "v_proj"]))
    model.load_part_weights("text", str(folder))
    with torch.no_grad():  # LoRA starts with B = 0; non-zero adapters make their gradient path visible
        for name, param in model.part("text").lm.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    return model


def av_tokens(model, videos: int = 2, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    cfg = model.config
    frames = torch.randn(videos, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=gen)
    audio = 0.1 * torch.randn(videos, 1, cfg.audio.clip_samples, generator=gen)
    with torch.no_grad():
        return model.encode_av(frames, audio)


def test_lm_sampling_uses_its_cache_and_its_end_of_text(lm_folder):
    model = lora_model(lm_folder)
    decoder, av = model.part("text"), av_tokens(model)
    eos = decoder.config.eos_token_id
    drawn = [sample_captions(decoder, av, None, num_samples=3, max_length=MAX_LENGTH, use_cache=use_cache,
                             generator=torch.Generator().manual_seed(7)) for use_cache in (True, False)]
    assert torch.equal(drawn[0].token_ids, drawn[1].token_ids) and torch.equal(drawn[0].drawn, drawn[1].drawn)
    ids = drawn[0].token_ids
    assert ids.shape == (6, MAX_LENGTH - 1) and len({tuple(row) for row in ids.tolist()}) > 1
    for row, mask in zip(ids.tolist(), drawn[0].drawn.tolist()):
        end = row.index(eos)  # every caption ends with the LM's end-of-text, then pads with it
        assert all(token == eos for token in row[end:])
        assert mask[:end] == [True] * end and not any(mask[end + 1:])


def test_lm_logprobs_equal_its_own_log_softmax_and_train_the_adapters_only(lm_folder):
    model = lora_model(lm_folder)
    decoder, av = model.part("text"), av_tokens(model)
    samples = sample_captions(decoder, av, None, num_samples=3, max_length=MAX_LENGTH,
                              generator=torch.Generator().manual_seed(11))
    scores = caption_logprobs(decoder, av, None, samples, 3)

    expected = []
    with torch.no_grad():
        for row, (ids, drawn) in enumerate(zip(samples.token_ids, samples.drawn)):
            count = int(drawn.sum())
            prefix = decoder.prefix(av[row // 3:row // 3 + 1])
            embeds = torch.cat([prefix, decoder.lm.get_input_embeddings()(ids[None, :count - 1])], dim=1)
            logprobs = F.log_softmax(decoder.lm(inputs_embeds=embeds).logits[0, -count:].float(), dim=-1)
            expected.append(logprobs.gather(1, ids[:count, None]).sum())
    torch.testing.assert_close(scores.logprob.detach(), torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert math.isfinite(float(scores.entropy)) and float(scores.entropy) > 0

    model.zero_grad(set_to_none=True)
    (torch.linspace(-1.0, 2.0, 6) * scores.logprob).sum().backward()
    with_grad = {name for name, param in decoder.named_parameters() if param.grad is not None
                 and param.grad.abs().sum() > 0}
    assert any("lora_A" in name for name in with_grad) and any("lora_B" in name for name in with_grad)
    assert "projector.0.weight" in with_grad
    assert all("lora_" in name for name in with_grad if name.startswith("lm."))


FLAGS = ["--num-train-epochs", "1", "--learning-rate", "1e-2", "--num-workers", "0", "--device", "cpu",
         "--logging-steps", "1", "--seed", "3", "--scst", "--sc-train-sample-n", "4"]


def run_scst(lm_folder, output_dir, batch: int, model=None, env=None):
    model = model or lora_model(lm_folder)
    config = model.config
    args = parse_train_args(FLAGS + ["--output-dir", str(output_dir), "--per-gpu-train-batch-size", str(batch)],
                            world_size=env.world_size if env else 1, model_config=config)
    torch.set_num_threads(1)
    return loop.train(args, env, model=model, recipe=PreprocessRecipe(stored_frames=8, short_side=64),
                      train_dataset=ReferencedDataset(config, 4, tokenizer=load_tokenizer(str(lm_folder))))


def test_train_scst_with_a_lora_lm_moves_adapters_and_trainable_parts_only(lm_folder, tmp_path):
    model = lora_model(lm_folder)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert run_scst(lm_folder, tmp_path / "run", 2, model).global_step == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "log"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    rewards = [e.value for e in events.Scalars("train/reward")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(value > 0 for value in rewards)  # some reward, hence some gradient

    after = model.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    lm_changed = {name for name in changed if name.startswith("text.lm.")}
    assert lm_changed and all("lora_" in name for name in lm_changed)  # the base LM stays as loaded
    assert "text.projector.0.weight" in changed


def _worker(rank: int, world_size: int, port: int, lm_folder: str, output_dir: str) -> None:
    import os

    from avlformer.training.distributed import init_distributed, teardown_distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = init_distributed("cpu")
    try:
        run_scst(Path(lm_folder), output_dir, 1, env=env)
    finally:
        teardown_distributed()


def test_scst_with_a_lora_lm_on_two_processes_matches_one(lm_folder, tmp_path):
    """Samples are tied to the video and gradients averaged over ranks: 2 x batch 1 == 1 x batch 2."""
    import socket

    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    one = run_scst(lm_folder, tmp_path / "one", 2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(2, port, str(lm_folder), str(tmp_path / "two")), nprocs=2, join=True,
                       start_method=start_method)
    expected = load_file(str(one.last_checkpoint / "model.safetensors"))
    actual = load_file(str(tmp_path / "two" / one.last_checkpoint.name / "model.safetensors"))
    assert any("lora_" in name for name in expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=2e-5, msg=name)
