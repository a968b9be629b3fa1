"""The cross-entropy trainer: optimizer steps over epochs of micro-batches, checkpoints, validation, logging.

Everything comes in through the constructor (``loop.train`` picks this trainer or ``scst.SelfCriticalTrainer``).
Batch positions are resumable and augmentation is seeded per (seed, epoch, index) (docs/training.md, Resuming).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from avlformer.data.dataset import collate as dataset_collate
from avlformer.data.dataset import seed_worker
from avlformer.training import checkpointing as ckpt
from avlformer.training.config import TrainConfig
from avlformer.training.distributed import (DistEnv, all_reduce_mean, any_rank_true, barrier, unwrap_model,
                                            wrap_model)
from avlformer.training.flag_table import ArgumentError
from avlformer.training.optim import build_optimizer, build_scheduler
from avlformer.training.setup import summary_writer, write_args_json
from avlformer.data.tokenizer import load_tokenizer
from avlformer.training.validation import append_history, decode_split, prediction_stem, score, write_outputs

LOSS_TERMS = ("loss", "lm_loss", "mlm_loss", "sparsity_loss", "mlm_accuracy")
log = logging.getLogger("avlformer.train")


class NonFiniteLossError(RuntimeError):
    """Raised when the loss (or, without fp16 loss scaling, the gradient norm) is NaN or infinite."""


@dataclass
class TrainResult:
    global_step: int
    last_checkpoint: Path | None
    best: dict | None


@dataclass
class Schedule:
    micro_batches_per_epoch: int   # per rank, after dropping the remainder that does not fill an optimizer step
    steps_per_epoch: int
    total_steps: int


class SampleSeededDataset(Dataset):
    """Wraps a dataset with ``set_seed(seed)`` so item ``i`` of epoch ``e`` always sees the same augmentation."""

    def __init__(self, dataset: Dataset, seed: int, limit: int = -1):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0
        self.size = len(dataset) if limit <= 0 else min(limit, len(dataset))  # --limited_samples: the first N

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if hasattr(self.dataset, "set_seed"):
            seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1, np.uint64)[0]
            self.dataset.set_seed(int(seed))
        return self.dataset[index]


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches for one epoch, from ``skip`` on."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                 num_batches: int, skip: int = 0):
        self.sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.sampler.set_epoch(epoch)
        self.batches = BatchSampler(self.sampler, batch_size, drop_last=True)
        self.num_batches = num_batches
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self.batches, self.skip, self.num_batches)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.skip)


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def plan_schedule(num_samples: int, config: TrainConfig, env: DistEnv) -> Schedule:
    optim = config.optim
    batch, accumulation = optim.per_gpu_train_batch_size, optim.gradient_accumulation_steps
    steps = num_samples // env.world_size // batch // accumulation  # each rank's share, in whole micro-batches
    if steps < 1:
        raise ArgumentError(f"the training set has {num_samples} samples, fewer than one optimizer step needs: "
                            f"--per-gpu-train-batch-size {batch} x {env.world_size} process(es) x "
                            f"--gradient-accumulation-steps {accumulation} = {batch * env.world_size * accumulation}"
                            "; use a smaller batch")
    return Schedule(steps * accumulation, steps, optim.max_steps or steps * optim.num_train_epochs)


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Trainer:
    loss_terms = LOSS_TERMS  # what forward_backward returns, averaged and logged as train/<term>

    def __init__(self, config: TrainConfig, env: DistEnv, model: nn.Module, recipe, train_dataset, val_dataset,
                 collate_fn, vocab_dir: str | None):
        run, optim = config.run, config.optim
        self.config, self.env = config, env
        self.output_dir = Path(run.output_dir)
        self.recipe, self.vocab_dir = recipe, vocab_dir
        self.collate_fn = collate_fn
        self.train_data = SampleSeededDataset(train_dataset, run.seed, config.data.limited_samples)
        self.val_dataset = val_dataset
        self.schedule = plan_schedule(len(self.train_data), config, env)
        self.autocast = autocast_for(run.precision, env.device)
        self.model = wrap_model(model, run.distributed_strategy, env, features=bool(config.data.features))
        self.library_model = unwrap_model(self.model)
        self.optimizer = build_optimizer(self.library_model, optim.learning_rate, optim.backbone_coef_lr,
                                         optim.weight_decay, optim.adam_epsilon)
        self.scheduler = build_scheduler(self.optimizer, optim.scheduler, self.schedule.total_steps,
                                         optim.warmup_ratio, optim.min_lr)
        # Loss scaling for fp16 only; disabled, each of its calls is a no-op (or the plain optimizer step).
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=run.precision == "fp16")
        self.progress = ckpt.Progress()
        self.last_checkpoint: Path | None = None
        self.writer = None

    def resume(self) -> None:
        found = ckpt.choose_resume_checkpoint(self.config.run.resume, self.output_dir)
        if found is None:
            return
        folder, state, weights = found
        self.progress = ckpt.restore_training_checkpoint(folder, state, weights, self.model, self.optimizer,
                                                         self.scheduler, self.scaler, self.env)
        self.last_checkpoint = folder
        log.info("resumed from %s at step %d (epoch %d, %d micro-batches into it)", folder,
                 self.progress.global_step, self.progress.epoch, self.progress.batches_done_in_epoch)

    def derived_args(self) -> dict:
        return {"max_iter": self.schedule.total_steps * self.config.optim.gradient_accumulation_steps,
                "max_global_step": self.schedule.total_steps,
                "global_iters_per_epoch": self.schedule.steps_per_epoch,
                "num_gpus": self.env.world_size, "distributed": self.env.is_distributed,
                "device": str(self.env.device)}

    def checkpoint_due(self, step: int, end_of_epoch: bool) -> bool:
        save_steps = self.config.run.save_steps
        return step == self.schedule.total_steps or (step % save_steps == 0 if save_steps > 0 else end_of_epoch)

    def run(self) -> TrainResult:
        if self.env.is_main:
            if self.config.run.overwrite_output_dir:  # as late as possible: the data and model are known good here
                ckpt.remove_earlier_run(self.output_dir)
            write_args_json(self.config, self.output_dir, self.derived_args())
            self.writer = summary_writer(self.output_dir / "log")
        log.info("training: %d samples, %d optimizer steps per epoch, %d steps in all, global batch %d",
                 len(self.train_data), self.schedule.steps_per_epoch, self.schedule.total_steps,
                 self.config.optim.effective_batch_size)
        bar = tqdm(total=self.schedule.total_steps, initial=self.progress.global_step, desc="train",
                   disable=not self.env.is_main, dynamic_ncols=True)
        try:
            while self.progress.global_step < self.schedule.total_steps:
                self.run_epoch(bar)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        return TrainResult(self.progress.global_step, self.last_checkpoint,
                           ckpt.read_best(self.output_dir) if self.env.is_main else None)

    def run_epoch(self, bar) -> None:
        config, env, progress = self.config, self.env, self.progress
        self.train_data.epoch = progress.epoch
        seed = config.run.seed
        sampler = EpochBatchSampler(len(self.train_data), config.optim.per_gpu_train_batch_size, env.rank,
                                    env.world_size, seed, progress.epoch, self.schedule.micro_batches_per_epoch,
                                    skip=progress.batches_done_in_epoch)
        # The loader's own generator keeps DataLoader start-up from drawing on the global torch RNG (which the
        # model's dropout uses), so starting a loader mid-epoch after a resume leaves that stream where it was.
        loader = DataLoader(self.train_data, batch_sampler=sampler, num_workers=config.data.num_workers,
                            collate_fn=self.collate_fn, pin_memory=torch.cuda.is_available(),
                            worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(seed * 1009 + progress.epoch * 31 + env.rank))
        accumulation = config.optim.gradient_accumulation_steps
        sums = torch.zeros(len(self.loss_terms), device=env.device)
        non_finite = torch.zeros((), dtype=torch.bool, device=env.device)
        window_start, window_steps = time.perf_counter(), 0
        for batch in loader:
            progress.batches_done_in_epoch += 1
            boundary = progress.batches_done_in_epoch % accumulation == 0
            batch = {k: v.to(env.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            outputs = self.forward_backward(batch, boundary)
            sums += torch.stack([outputs.get(k, torch.zeros((), device=env.device)).detach().float()
                                 for k in self.loss_terms])
            non_finite |= ~torch.isfinite(outputs["loss"].detach())
            if not boundary:
                continue
            if any_rank_true(bool(non_finite), env):
                self.stop_non_finite("loss", outputs)
            grad_norm = self.optimizer_step(outputs)
            progress.global_step += 1
            window_steps += 1
            bar.update(1)
            end_of_epoch = progress.batches_done_in_epoch >= self.schedule.micro_batches_per_epoch
            if progress.global_step % config.run.logging_steps == 0 or progress.global_step == self.schedule.total_steps:
                elapsed = time.perf_counter() - window_start
                self.log_step(sums / (window_steps * accumulation), grad_norm, window_steps, elapsed, bar)
                sums.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if end_of_epoch:
                progress.epoch += 1
                progress.batches_done_in_epoch = 0
            if self.checkpoint_due(progress.global_step, end_of_epoch):
                self.save_and_validate()
            if progress.global_step >= self.schedule.total_steps:
                break
        if progress.batches_done_in_epoch:  # the resumed tail of an epoch ended without an end-of-epoch step
            progress.epoch += 1
            progress.batches_done_in_epoch = 0

    def forward_backward(self, batch: dict, boundary: bool) -> dict:
        accumulation = self.config.optim.gradient_accumulation_steps
        sync = contextlib.nullcontext()
        if not boundary and isinstance(self.model, nn.parallel.DistributedDataParallel):
            sync = self.model.no_sync()  # all-reduce gradients once per optimizer step, not per micro-batch
        with sync:
            with self.autocast():
                outputs = self.model(batch)
            loss = outputs["loss"].float() / accumulation
            self.scaler.scale(loss).backward()
        return outputs

    def optimizer_step(self, outputs: dict) -> float:
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.library_model.parameters() if p.requires_grad]
        max_norm = self.config.optim.max_grad_norm if self.config.optim.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        grad_norm = float(norm)
        if not self.scaler.is_enabled() and not math.isfinite(grad_norm):
            self.stop_non_finite("gradient norm", outputs)  # with fp16 the scaler skips such steps by design
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def stop_non_finite(self, what: str, outputs: dict) -> None:
        terms = ", ".join(f"{k}={float(outputs[k].detach()):.4g}" for k in self.loss_terms if k in outputs)
        last = str(self.last_checkpoint) if self.last_checkpoint else "none written yet"
        raise NonFiniteLossError(
            f"the {what} became NaN/inf at optimizer step {self.progress.global_step + 1} (epoch "
            f"{self.progress.epoch}); this micro-batch: {terms}. Training stopped without saving; the last good "
            f"checkpoint is {last} (resume with --resume {last if self.last_checkpoint else 'auto'}). Try a lower "
            f"--learning-rate, --precision fp32 or bf16, or check the data.")

    def log_step(self, means: torch.Tensor, grad_norm: float, steps: int, elapsed: float, bar) -> dict | None:
        """Log the loss terms averaged over ranks; returns them by name on the main rank (None elsewhere)."""
        means = all_reduce_mean(means, self.env)
        if not self.env.is_main:
            return None
        step = self.progress.global_step
        values = {f"train/{name}": float(v) for name, v in zip(self.loss_terms, means)}
        for group in self.optimizer.param_groups:
            values[f"train/lr_{group['name']}"] = group["lr"]
        samples = steps * self.config.optim.effective_batch_size
        values.update({"train/grad_norm": grad_norm, "train/samples_per_sec": samples / max(elapsed, 1e-9),
                       "train/memory_mb": memory_mb(self.env.device)})
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        bar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{values['train/lr_decay']:.2e}")
        log.info("step %d/%d epoch %d %s", step, self.schedule.total_steps, self.progress.epoch,
                 " ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in values.items()))
        return dict(zip(self.loss_terms, means.tolist()))

    def save_and_validate(self) -> None:
        step = self.progress.global_step
        name = f"checkpoint-{step // self.schedule.steps_per_epoch}-{step}"
        folder = ckpt.save_training_checkpoint(self.output_dir, name, self.model, self.config.model, self.recipe,
                                               self.optimizer, self.scheduler, self.scaler, self.progress, self.env,
                                               self.vocab_dir)
        self.last_checkpoint = folder
        log.info("saved %s", folder)
        if self.config.run.evaluate_during_training and self.val_dataset is not None:
            self.validate(folder)
        barrier(self.env)

    def validate(self, folder: Path) -> None:
        # The val split is raw videos in every mode (with --features too), so its batches are plain ones.
        # In order, sharded across ranks (the last shard padded with repeats; predictions are de-duplicated by key).
        sampler = DistributedSampler(self.val_dataset, num_replicas=self.env.world_size, rank=self.env.rank,
                                     shuffle=False, drop_last=False)
        loader = DataLoader(self.val_dataset, batch_size=self.config.optim.per_gpu_eval_batch_size, sampler=sampler,
                            num_workers=self.config.data.num_workers, collate_fn=dataset_collate,
                            pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(0))
        predictions, references = decode_split(self.model, loader, self.env, self.autocast,
                                               load_tokenizer(self.vocab_dir))
        if not self.env.is_main:
            return
        metrics, problem = score(predictions, references)
        if problem:
            log.warning("validation metrics skipped: %s", problem)
        model_config = self.config.model
        write_outputs(folder, prediction_stem(self.config.data.val_yaml, model_config.num_beams,
                                              model_config.max_gen_length),
                      predictions, metrics)
        step = self.progress.global_step
        for metric, value in metrics.items():
            self.writer.add_scalar(f"valid/{metric}", value, step)
        if ckpt.update_best(self.output_dir, folder, metrics, self.config, self.recipe):
            log.info("new best CIDEr %.4f at %s", metrics["CIDEr"], folder.name)
        best = ckpt.read_best(self.output_dir)
        entry = {**metrics, "epoch": step // self.schedule.steps_per_epoch, "iteration": step,
                 "best_CIDEr": best["score"] if best else None}
        append_history(self.output_dir, self.config.data.val_yaml, entry)
        log.info("validation at step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
