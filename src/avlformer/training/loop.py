"""The training loop: optimizer steps over epochs of micro-batches, checkpoints, validation, logging.

The library (data, modeling) knows nothing of this module; everything it needs comes in through ``train()``'s
arguments, so tests and the demo can hand in their own model or datasets.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from avlformer.data.dataset import collate as dataset_collate
from avlformer.training import checkpointing as ckpt
from avlformer.training.batches import (EpochBatchSampler, SampleSeededDataset, epoch_loader, eval_loader,
                                        micro_batches_per_epoch)
from avlformer.training.distributed import (DistEnv, all_reduce_mean, any_rank_true, barrier, unwrap_model,
                                            wrap_model)
from avlformer.training.flag_table import ArgumentError
from avlformer.training.optim import build_optimizer, build_scheduler
from avlformer.training.setup import setup_logging, summary_writer, write_args_json
from avlformer.training.validation import append_history, decode_split, prediction_stem, score, write_outputs

LOSS_TERMS = ("loss", "lm_loss", "mlm_loss", "sparsity_loss", "mlm_accuracy")
log = logging.getLogger("avlformer.train")


class NonFiniteLossError(RuntimeError):
    """Raised when the loss (or, without fp16 loss scaling, the gradient norm) is NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; the message says how to continue."""

    def __init__(self, global_step: int, total_steps: int, last_checkpoint: Path | None):
        if last_checkpoint is not None:
            hint = (f"the last checkpoint is {last_checkpoint.absolute()}: rerun the same command with --resume "
                    f"{last_checkpoint.absolute()}")
        else:
            hint = "no checkpoint was written yet: rerun the same command to start again"
        super().__init__(f"interrupted at optimizer step {global_step} of {total_steps}; {hint}")
        self.last_checkpoint = last_checkpoint


@dataclass
class TrainResult:
    global_step: int
    last_checkpoint: Path | None
    best: dict | None
    history: list[dict] = field(default_factory=list)


@dataclass
class Schedule:
    micro_batches_per_epoch: int   # per rank, after dropping the remainder that does not fill an optimizer step
    steps_per_epoch: int
    total_steps: int


# ------------------------------------------------------------------------------------------------ setup helpers

def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def plan_schedule(num_samples: int, args, env: DistEnv) -> Schedule:
    micro = micro_batches_per_epoch(num_samples, args.per_gpu_train_batch_size, env.world_size)
    steps = micro // args.gradient_accumulation_steps
    if steps < 1:
        needed = args.per_gpu_train_batch_size * env.world_size * args.gradient_accumulation_steps
        raise ArgumentError(f"the training set has {num_samples} samples, fewer than one optimizer step needs: "
                            f"--per-gpu-train-batch-size {args.per_gpu_train_batch_size} x {env.world_size} "
                            f"process(es) x --gradient-accumulation-steps {args.gradient_accumulation_steps} = "
                            f"{needed}; use a smaller batch")
    return Schedule(steps * args.gradient_accumulation_steps, steps, steps * args.num_train_epochs)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ------------------------------------------------------------------------------------------------ the trainer

class Trainer:
    loss_terms = LOSS_TERMS  # what forward_backward returns, averaged and logged as train/<term>

    def __init__(self, args, env: DistEnv, model: nn.Module, recipe, train_dataset, val_dataset, collate_fn,
                 vocab_dir: str | None):
        self.args, self.env = args, env
        self.output_dir = Path(args.output_dir)
        self.recipe, self.vocab_dir = recipe, vocab_dir
        self.collate_fn = collate_fn
        self.train_data = SampleSeededDataset(train_dataset, args.seed, args.limited_samples)
        self.val_dataset = val_dataset
        self.schedule = plan_schedule(len(self.train_data), args, env)
        self.autocast = autocast_for(args.precision, env.device)
        self.model = wrap_model(model, args.distributed_strategy, env, features=bool(args.features))
        self.library_model = unwrap_model(self.model)
        self.optimizer = build_optimizer(self.library_model, args.learning_rate, args.backbone_coef_lr,
                                         args.weight_decay, args.adam_epsilon)
        self.scheduler = build_scheduler(self.optimizer, args.scheduler, self.schedule.total_steps,
                                         args.warmup_ratio, args.min_lr)
        self.scaler = torch.amp.GradScaler(env.device.type) if args.precision == "fp16" else None
        self.progress = ckpt.Progress()
        self.last_checkpoint: Path | None = None
        self.history: list[dict] = []
        self.writer = None

    # -- bookkeeping ------------------------------------------------------------------------------------
    def resume(self) -> None:
        found = ckpt.choose_resume_checkpoint(self.args.resume, self.output_dir)
        if found is None:
            return
        folder, state, weights = found
        self.progress = ckpt.restore_training_checkpoint(folder, state, weights, self.model, self.optimizer,
                                                         self.scheduler, self.scaler, self.env)
        self.last_checkpoint = folder
        log.info("resumed from %s at step %d (epoch %d, %d micro-batches into it)", folder,
                 self.progress.global_step, self.progress.epoch, self.progress.batches_done_in_epoch)

    def derived_args(self) -> dict:
        return {"max_iter": self.schedule.micro_batches_per_epoch * self.args.num_train_epochs,
                "max_global_step": self.schedule.total_steps,
                "global_iters_per_epoch": self.schedule.steps_per_epoch,
                "num_gpus": self.env.world_size, "distributed": self.env.is_distributed,
                "device": str(self.env.device)}

    def checkpoint_due(self, step: int, end_of_epoch: bool) -> bool:
        if step == self.schedule.total_steps:
            return True
        if self.args.save_steps > 0:
            return step % self.args.save_steps == 0
        return end_of_epoch

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        if self.env.is_main:
            ckpt.remove_stale_temporaries(self.output_dir)
            write_args_json(self.args, self.output_dir, self.derived_args())
            self.writer = summary_writer(self.output_dir / "log")
        log.info("training: %d samples, %d optimizer steps per epoch, %d steps in all, global batch %d",
                 len(self.train_data), self.schedule.steps_per_epoch, self.schedule.total_steps,
                 self.args.effective_batch_size)
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
                           ckpt.read_best(self.output_dir) if self.env.is_main else None, self.history)

    def run_epoch(self, bar) -> None:
        args, env, progress = self.args, self.env, self.progress
        self.train_data.epoch = progress.epoch
        sampler = EpochBatchSampler(len(self.train_data), args.per_gpu_train_batch_size, env.rank, env.world_size,
                                    args.seed, progress.epoch, self.schedule.micro_batches_per_epoch,
                                    skip=progress.batches_done_in_epoch)
        from avlformer.data.dataset import seed_worker

        loader = epoch_loader(self.train_data, sampler, args.num_workers, self.collate_fn, seed_worker,
                              generator_seed=args.seed * 1009 + progress.epoch * 31 + env.rank)
        accumulation = args.gradient_accumulation_steps
        sums = torch.zeros(len(self.loss_terms), device=env.device)
        non_finite = torch.zeros((), dtype=torch.bool, device=env.device)
        window_start, window_steps = time.perf_counter(), 0
        for batch in loader:
            progress.batches_done_in_epoch += 1
            boundary = progress.batches_done_in_epoch % accumulation == 0
            outputs = self.forward_backward(move_batch(batch, env.device), boundary)
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
            if progress.global_step % args.logging_steps == 0 or progress.global_step == self.schedule.total_steps:
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
        accumulation = self.args.gradient_accumulation_steps
        sync = contextlib.nullcontext()
        if not boundary and isinstance(self.model, nn.parallel.DistributedDataParallel):
            sync = self.model.no_sync()  # all-reduce gradients once per optimizer step, not per micro-batch
        with sync:
            with self.autocast():
                outputs = self.model(batch)
            loss = outputs["loss"].float() / accumulation
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        return outputs

    def optimizer_step(self, outputs: dict) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.library_model.parameters() if p.requires_grad]
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
            norm = norm.full_tensor()
        grad_norm = float(norm)
        if self.scaler is None and not math.isfinite(grad_norm):
            self.stop_non_finite("gradient norm", outputs)  # with fp16 the scaler skips such steps by design
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
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
        samples = steps * self.args.effective_batch_size
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
        name = ckpt.checkpoint_name(step // self.schedule.steps_per_epoch, step)
        folder = ckpt.save_training_checkpoint(self.output_dir, name, self.model, self.args.model, self.recipe,
                                               self.optimizer, self.scheduler, self.scaler, self.progress, self.env,
                                               self.vocab_dir)
        self.last_checkpoint = folder
        log.info("saved %s", folder)
        if self.args.evaluate_during_training and self.val_dataset is not None:
            self.validate(folder)
        barrier(self.env)

    def validate(self, folder: Path) -> None:
        # The val split is raw videos in every mode (with --features too), so its batches are plain ones.
        loader = eval_loader(self.val_dataset, self.args.per_gpu_eval_batch_size, self.env.rank,
                             self.env.world_size, self.args.num_workers, dataset_collate)
        from avlformer.data.tokenizer import load_tokenizer

        predictions, references = decode_split(self.model, loader, self.env, self.args, self.autocast,
                                               load_tokenizer(self.vocab_dir))
        if not self.env.is_main:
            return
        metrics, problem = score(predictions, references)
        if problem:
            log.warning("validation metrics skipped: %s", problem)
        write_outputs(folder, prediction_stem(self.args.val_yaml, self.args.num_beams, self.args.max_gen_length),
                      predictions, metrics)
        step = self.progress.global_step
        for metric, value in metrics.items():
            self.writer.add_scalar(f"valid/{metric}", value, step)
        if ckpt.update_best(self.output_dir, folder, metrics, training_args=self.args.flag_values()):
            log.info("new best CIDEr %.4f at %s", metrics["CIDEr"], folder.name)
        best = ckpt.read_best(self.output_dir)
        entry = {**metrics, "epoch": step // self.schedule.steps_per_epoch, "iteration": step,
                 "best_CIDEr": best["score"] if best else None}
        append_history(self.output_dir, self.args.val_yaml, entry)
        self.history.append(entry)
        log.info("validation at step %d: %s", step, " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


def train(config, env: DistEnv | None = None, *, model: nn.Module | None = None, train_dataset=None,
          val_dataset=None, collate_fn=None, recipe=None) -> TrainResult:
    """Train with a resolved ``config`` (see ``args.parse_train_args``). ``model`` / datasets may be handed in
    (tests, the demo); otherwise they are built from the flags. ``recipe``: the preprocessing recipe of the
    training data, copied into every checkpoint (default: the one recorded beside --train_yaml)."""
    from avlformer.training.distributed import init_distributed
    from avlformer.training.model_setup import apply_freezing, build_model, check_given_model, describe
    from avlformer.training.setup import (build_datasets, check_validation_recipe, determinism, seed_everything,
                                          training_recipe, vocab_dir_for)

    summary_writer(None)  # a missing optional dependency shows before any work
    env = env or init_distributed(config.device, config.local_rank)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir, env.is_main)
    with determinism(config.deterministic, env.device):
        vocab_dir = vocab_dir_for(config)
        if train_dataset is None:  # data problems show before a large model is built
            from avlformer.data.tokenizer import load_tokenizer

            if config.features:
                from avlformer.training.features import build_feature_datasets

                train_dataset, val_dataset = build_feature_datasets(config, load_tokenizer(vocab_dir))
            else:
                train_dataset, val_dataset = build_datasets(config, load_tokenizer(vocab_dir))
            recipe = recipe or train_dataset.recipe
            if val_dataset is not None:
                check_validation_recipe(config, recipe, val_dataset.recipe)
        recipe = recipe or getattr(train_dataset, "recipe", None) or training_recipe(config)
        plan_schedule(len(SampleSeededDataset(train_dataset, config.seed, config.limited_samples)), config, env)
        seed_everything(config.seed)  # the model's initial weights and dropout follow from the seed alone
        if model is None:
            line, too_large = describe(config, env.device)
            (log.warning if too_large else log.info)("%s", line)
            model = build_model(config, env.device)
        else:
            check_given_model(config, model)
            apply_freezing(model, config)
            model = model.to(env.device)
        if config.features:
            from avlformer.training.features import collate_features, prepare_feature_model

            prepare_feature_model(model, config, train_dataset)
            collate_fn = collate_fn or collate_features
        collate_fn = collate_fn or dataset_collate
        trainer_class = Trainer
        if config.scst:
            from avlformer.training.scst import SelfCriticalTrainer as trainer_class
        trainer = trainer_class(config, env, model, recipe, train_dataset, val_dataset, collate_fn, vocab_dir)
        try:
            trainer.resume()
            return trainer.run()
        except KeyboardInterrupt:
            raise TrainingInterrupted(trainer.progress.global_step, trainer.schedule.total_steps,
                                      trainer.last_checkpoint) from None
