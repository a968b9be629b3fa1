"""``train``: the one entry of a training run. It builds what the run needs (seeds, log, data, model), picks the
trainer (``trainer.Trainer`` for cross-entropy, ``scst.SelfCriticalTrainer`` with ``--scst``) and turns Ctrl-C
into ``TrainingInterrupted``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from avlformer.data.dataset import collate as dataset_collate
from avlformer.data.tokenizer import load_tokenizer
from avlformer.training import checkpointing as ckpt
from avlformer.training.config import TrainConfig
from avlformer.training.distributed import DistEnv, init_distributed
from avlformer.training.features import build_feature_datasets, collate_features, prepare_feature_model
from avlformer.training.scst import SelfCriticalTrainer
from avlformer.training.setup import (apply_freezing, build_datasets, build_model, check_given_model,
                                      check_tokenizer_fits, check_validation_recipe, describe, determinism,
                                      seed_everything, setup_logging, summary_writer, training_recipe, vocab_dir_for)
from avlformer.training.trainer import (NonFiniteLossError, SampleSeededDataset, Trainer, TrainResult, log,
                                        plan_schedule)

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted", "TrainResult", "train"]


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; the message says how to continue."""

    def __init__(self, global_step: int, total_steps: int, last_checkpoint: Path | None):
        if last_checkpoint is not None:
            hint = (f"the last checkpoint is {last_checkpoint.absolute()}: rerun the same command with --resume "
                    f"{last_checkpoint.absolute()}")
        else:
            hint = "no checkpoint was written yet: rerun the same command to start again"
        super().__init__(f"interrupted at optimizer step {global_step} of {total_steps}; {hint}")
        self.global_step, self.last_checkpoint = global_step, last_checkpoint


def train(config: TrainConfig, env: DistEnv | None = None, *, model: nn.Module | None = None, train_dataset=None,
          val_dataset=None, recipe=None) -> TrainResult:
    """Train with a resolved ``config`` (see ``args.parse_train_args``). ``model`` / datasets may be handed in
    (tests, the demo); otherwise they are built from the config. ``recipe``: the preprocessing recipe of the
    training data, copied into every checkpoint (default: the one recorded beside --train_yaml)."""
    summary_writer(None)  # a missing optional dependency shows before any work
    run, data = config.run, config.data
    env = env or init_distributed(run.device, run.local_rank)
    output_dir = Path(run.output_dir)
    with (ckpt.claim_output_dir(output_dir, run.resume, run.overwrite_output_dir, env),
          determinism(run.deterministic, env.device)):
        setup_logging(output_dir, env.is_main)
        vocab_dir = vocab_dir_for(config)
        if train_dataset is None:  # data problems show before a large model is built
            build = build_feature_datasets if data.features else build_datasets
            tokenizer = load_tokenizer(vocab_dir)
            check_tokenizer_fits(config, tokenizer, vocab_dir)
            train_dataset, val_dataset = build(config, tokenizer)
            if val_dataset is not None:
                check_validation_recipe(config, recipe or train_dataset.recipe, val_dataset.recipe)
        recipe = recipe or getattr(train_dataset, "recipe", None) or training_recipe(config)
        plan_schedule(len(SampleSeededDataset(train_dataset, run.seed, data.limited_samples)), config, env)
        seed_everything(run.seed)  # the model's initial weights and dropout follow from the seed alone
        if model is None:
            line, too_large = describe(config, env.device)
            (log.warning if too_large else log.info)("%s", line)
            model = build_model(config, env.device)
        else:
            check_given_model(config, model)
            apply_freezing(model, config)
            model = model.to(env.device)
        if data.features:
            prepare_feature_model(model, config, train_dataset)
        trainer_class = SelfCriticalTrainer if config.scst.enabled else Trainer
        trainer = trainer_class(config, env, model, recipe, train_dataset, val_dataset,
                                collate_features if data.features else dataset_collate, vocab_dir)
        try:
            trainer.resume()
            return trainer.run()
        except KeyboardInterrupt:
            raise TrainingInterrupted(trainer.progress.global_step, trainer.schedule.total_steps,
                                      trainer.last_checkpoint) from None
