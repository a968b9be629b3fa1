"""``avlformer train --scst``: self-critical sequence training with a CIDEr-D reward (docs/training.md).

The policy-gradient forward bypasses the DDP wrapper, so gradients are all-reduced here. Sampling and scoring go
through the decoder's own interface (modeling/sampling.py).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
import torch.distributed as dist

from avlformer.data.tokenizer import decode_caption, load_tokenizer
from avlformer.evaluation.cider_reward import CiderD, has_repeated_ngram, reward_words
from avlformer.modeling.generation import generate
from avlformer.modeling.sampling import caption_logprobs, sample_captions
from avlformer.training.flag_table import ArgumentError
from avlformer.training.trainer import Trainer

log = logging.getLogger("avlformer.train")

SCST_TERMS = ("loss", "reward", "baseline", "greedy_reward", "xe_loss", "caption_length", "reference_length",
              "entropy", "repeated_4gram")
# Warnings in the log when training drifts into the known failure modes of metric optimisation.
REPEAT_WARNING = 0.2        # fraction of sampled captions with a repeated 4-gram
LENGTH_WARNING = 0.5        # sampled length / reference length


def reference_table(dataset) -> dict[str, list[str]]:
    """{video key: reference captions} of a training dataset (``CaptionDataset``'s ``keys`` and ``captions``)."""
    keys, captions = getattr(dataset, "keys", None), getattr(dataset, "captions", None)
    if not isinstance(keys, (list, tuple)) or captions is None:
        raise ArgumentError("--scst needs the training split's reference captions (the caption TSV of "
                            "--train_yaml); this training dataset carries none")
    table: dict[str, list[str]] = {}
    for key, video_captions in zip(keys, captions):
        table.setdefault(key, []).extend(video_captions)
    return table


def baseline_from_samples(rewards: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Each sample's baseline: the mean reward of the other samples of its video (rows video-major)."""
    per_video = rewards.view(-1, num_samples)
    others = (per_video.sum(dim=1, keepdim=True) - per_video) / (num_samples - 1)
    return others.reshape(-1)


def average_gradients(model: torch.nn.Module, world_size: int) -> None:
    """Sum-then-divide every trainable parameter's gradient over ranks; a parameter without a gradient on this
    rank contributes zeros, so every rank issues the same collectives."""
    params = [param for param in model.parameters() if param.requires_grad]
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    grads = [param.grad for param in params]
    flat = torch._utils._flatten_dense_tensors(grads)  # one collective per step, not one per tensor
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


class SelfCriticalTrainer(Trainer):
    def __init__(self, config, env, model, recipe, train_dataset, val_dataset, collate_fn, vocab_dir):
        super().__init__(config, env, model, recipe, train_dataset, val_dataset, collate_fn, vocab_dir)
        scst = config.scst
        self.loss_terms = tuple(t for t in SCST_TERMS if (t != "greedy_reward" or scst.baseline_type == "greedy")
                                and (t != "xe_loss" or scst.xe_weight > 0))
        references = reference_table(train_dataset)
        self.reward = CiderD({key: [reward_words(c) for c in caps] for key, caps in references.items()})
        self.tokenizer = load_tokenizer(vocab_dir)
        log.info("self-critical training: %d sampled captions per video (temperature %g, top-k %d, top-p %g), "
                 "baseline %s, reward CIDEr-D with document frequencies from %d training videos",
                 scst.sample_n, scst.temperature, scst.top_k, scst.top_p, scst.baseline_type,
                 len(references))

    # -- one micro-batch ----------------------------------------------------------------------------------
    def sampling_uniforms(self, video_keys: list[str]) -> torch.Tensor:
        """The random numbers of this batch's draws, ``(B·K, max_gen_length - 1)``, from (seed, epoch, video
        key, occurrence in the batch): a video's captions do not depend on the rank, the batch it shares or the
        device, so a resumed run, or one with another number of processes, samples the same captions."""
        rows, steps = self.config.scst.sample_n, self.config.model.max_gen_length - 1
        seen: dict[str, int] = {}
        parts = []
        for key in video_keys:
            seen[key] = seen.get(key, -1) + 1
            key_hash = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
            seed = np.random.SeedSequence([self.config.run.seed, self.progress.epoch, key_hash, seen[key]])
            generator = torch.Generator().manual_seed(int(seed.generate_state(1, np.uint64)[0]) % 2**63)
            parts.append(1.0 - torch.rand(rows, steps, generator=generator, dtype=torch.float64))
        return torch.cat(parts)

    def caption_words(self, token_ids: torch.Tensor) -> list[list[str]]:
        return [reward_words(decode_caption(ids, self.tokenizer)) for ids in token_ids.tolist()]

    def forward_backward(self, batch: dict, boundary: bool) -> dict:
        config, model, device = self.config, self.library_model, self.env.device
        scst, max_length = config.scst, config.model.max_gen_length
        per_video = scst.sample_n
        with self.autocast():
            av_tokens = model.batch_av_tokens(batch)
            av_mask = model.av_attention_mask()
            fixed_av, fixed_mask = av_tokens.detach(), None if av_mask is None else av_mask.detach()
            samples = sample_captions(model.part("text"), fixed_av, fixed_mask, num_samples=per_video,
                                      max_length=max_length,
                                      uniforms=self.sampling_uniforms(batch["video_keys"]),
                                      temperature=scst.temperature, top_k=scst.top_k, top_p=scst.top_p)
        words = self.caption_words(samples.token_ids)
        keys = [key for key in batch["video_keys"] for _ in range(per_video)]
        rewards = torch.tensor(self.reward.score_many(keys, words), dtype=torch.float64)
        stats = {}
        if scst.baseline_type == "greedy":
            with self.autocast():
                greedy = generate(model.part("text"), fixed_av, fixed_mask, max_length=max_length)
            greedy_rewards = torch.tensor(self.reward.score_many(batch["video_keys"],
                                                                 self.caption_words(greedy.token_ids)),
                                          dtype=torch.float64)
            baseline = greedy_rewards.repeat_interleave(per_video)
            stats["greedy_reward"] = greedy_rewards.mean()
        else:
            baseline = baseline_from_samples(rewards, per_video)
        with self.autocast():
            scores = caption_logprobs(model.part("text"), av_tokens, av_mask, samples, per_video)
        advantage = (rewards - baseline).to(device=device, dtype=torch.float32)
        loss = -(advantage * scores.logprob.float()).mean()
        loss = loss + model.config.sparsity_loss_weight * model.sparsity_term(loss)
        if scst.xe_weight > 0:
            # The cross-entropy anchor (a mixed objective): the references keep naming what the reward alone
            # lets the policy drop. Its own sparsity term is left out, the one above already counts.
            with self.autocast():
                xe = model(batch, av_tokens=av_tokens)
            xe_loss = xe["loss"].float() - model.config.sparsity_loss_weight * xe["sparsity_loss"].float()
            loss = loss + scst.xe_weight * xe_loss
            stats["xe_loss"] = xe_loss.detach()
        scaled = loss / config.optim.gradient_accumulation_steps
        self.scaler.scale(scaled).backward()
        stats.update(reward=rewards.mean(), baseline=baseline.mean(), entropy=scores.entropy,
                     caption_length=np.mean([len(w) for w in words]),
                     reference_length=np.mean([self.reward.reference_lengths[key] for key in batch["video_keys"]]),
                     repeated_4gram=np.mean([has_repeated_ngram(w) for w in words]))
        outputs = {name: torch.as_tensor(float(value), device=device) for name, value in stats.items()}
        outputs["loss"] = loss
        return outputs

    # -- the step and the log -----------------------------------------------------------------------------
    def optimizer_step(self, outputs: dict) -> float:
        if self.env.is_distributed:
            average_gradients(self.library_model, self.env.world_size)
        return super().optimizer_step(outputs)

    def log_step(self, means: torch.Tensor, grad_norm: float, steps: int, elapsed: float, bar) -> dict | None:
        values = super().log_step(means, grad_norm, steps, elapsed, bar)
        if values is None:
            return None
        if values["repeated_4gram"] > REPEAT_WARNING:
            log.warning("%.0f%% of the sampled captions repeat a 4-gram: degenerate repetition (lower "
                        "--learning-rate, or stop at an earlier checkpoint)", 100 * values["repeated_4gram"])
        if values["caption_length"] < LENGTH_WARNING * values["reference_length"]:
            log.warning("sampled captions average %.1f words against %.1f in the references: length collapse",
                        values["caption_length"], values["reference_length"])
        return values
