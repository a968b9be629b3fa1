"""Training checkpoints: ``output_dir/checkpoint-<epoch>-<step>/`` = the model checkpoint (model.safetensors,
config.json, preprocessor_config.json = the recipe of the training data, vocab.txt; see ``modeling.checkpoint``) +
``training_state.pt`` (optimizer, scheduler, scaler, every rank's RNG states, the step and the data position), so
``--resume`` continues exactly. A damaged checkpoint (a half-written or truncated file) is named and skipped for
the newest intact one.

The folder is assembled under a temporary name and renamed into place: a crash mid-save leaves the previous
checkpoints untouched and no half-written folder under a checkpoint name. ``training_state.pt`` holds only
tensors and plain Python values so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from avlformer.atomic import atomic_folder, write_text_atomic
from avlformer.error_text import one_line
from avlformer.training.distributed import DistEnv, barrier, gather_objects
from avlformer.json_files import read_json
from avlformer.model_card import write_checkpoint_card

TRAINING_STATE = "training_state.pt"
STATE_KEYS = ("progress", "world_size", "optimizer", "scheduler", "scaler", "rng")
BEST_DIR = "best_checkpoint"
BEST_RECORD = "best_checkpoint.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)-(\d+)$")
FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
log = logging.getLogger("avlformer.train")


@dataclass
class Progress:
    """Where training stands: the optimizer step count and the data position (epoch, micro-batches consumed)."""
    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"checkpoint-{epoch}-{global_step}"


# ---------------------------------------------------------------------------------------------------- RNG state

def capture_rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------- save

def save_training_checkpoint(output_dir: Path, name: str, model: torch.nn.Module, model_config, recipe, optimizer,
                             scheduler, scaler, progress: Progress, env: DistEnv, vocab_dir: str | None = None) -> Path:
    """Collective: every rank must call it (FSDP gathers shards, every rank contributes its RNG state)."""
    from avlformer.modeling.checkpoint import write_checkpoint_files

    final = Path(output_dir) / name
    model_state = get_model_state_dict(model, options=FULL_STATE)
    optim_state = get_optimizer_state_dict(model, optimizer, options=FULL_STATE)
    rng_states = gather_objects(capture_rng_state(), env)
    if env.is_main:
        training_state = {
            "progress": asdict(progress),
            "world_size": env.world_size,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng_states,
        }
        with atomic_folder(final) as staging:
            # Weights come from the gathered full state: under FSDP the model itself holds only shards.
            write_checkpoint_files(staging, model_state, model_config, recipe, vocab_dir=vocab_dir)
            torch.save(training_state, staging / TRAINING_STATE)
    barrier(env)
    return final


def remove_stale_temporaries(output_dir: Path) -> None:
    """Leftovers of a save that was killed midway (never a checkpoint: they were not renamed into place)."""
    for pattern in (".checkpoint-*", f".{BEST_DIR}.*"):
        for path in Path(output_dir).glob(pattern):
            if path.is_dir() and (path.name.endswith(".tmp") or path.name.endswith(".old")):
                shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- resume

def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete training checkpoints, oldest first by step."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_NAME.match(path.name)
        if match and (path / TRAINING_STATE).is_file():
            found.append((int(match.group(2)), path))
    return [path for _, path in sorted(found)]


class DamagedCheckpointError(ValueError):
    """A checkpoint file that cannot be read in full; the message starts with the file's path."""


class ResumeError(ValueError):
    """--resume cannot be honoured; the message says why and which --resume would work."""


def read_training_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(training state, weights) of a checkpoint, both read in full, so that damage shows here, before anything
    is restored into the model or optimizer."""
    from avlformer.modeling.checkpoint import WEIGHTS_NAME

    folder = Path(folder)
    weights_path, state_path = folder / WEIGHTS_NAME, folder / TRAINING_STATE
    for path in (weights_path, state_path):
        if not path.is_file():
            raise DamagedCheckpointError(f"{path}: missing")
    try:
        weights = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error type for every kind of damage
        raise DamagedCheckpointError(f"{weights_path}: damaged or incomplete ({one_line(err)})") from None
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a cut pickle stream, or a refused (non-tensor) object
        raise DamagedCheckpointError(f"{state_path}: damaged or incomplete ({one_line(err)})") from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise DamagedCheckpointError(f"{state_path}: not a training state (no {', '.join(missing)})")
    return state, weights


def newest_intact(checkpoints: list[Path]) -> tuple[Path, dict, dict] | None:
    """The newest readable checkpoint of ``checkpoints`` (oldest first), naming each damaged one on the log."""
    for folder in reversed(checkpoints):
        try:
            return (folder, *read_training_checkpoint(folder))
        except DamagedCheckpointError as err:
            log.warning("%s; skipping %s", err, folder.name)
    return None


def choose_resume_checkpoint(resume: str, output_dir: Path) -> tuple[Path, dict, dict] | None:
    """(folder, training state, weights) to resume from, or None to start at step 0.

    ``auto``: the newest intact checkpoint in ``output_dir`` (damaged newer ones are named and skipped; none at all
    means a fresh start). A folder: that checkpoint; when it is damaged, training stops with the --resume that
    would work."""
    if not resume:
        return None
    if resume == "auto":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            return None
        found = newest_intact(checkpoints)
        if found is None:
            raise ResumeError(f"--resume auto: every checkpoint in {output_dir} is damaged "
                              f"({', '.join(p.name for p in checkpoints)}); move them away to start from step 0")
        if found[0] != checkpoints[-1]:
            log.warning("resuming from %s, the newest intact checkpoint", found[0])
        return found
    folder = Path(resume)
    if not (folder / TRAINING_STATE).is_file():
        raise ResumeError(f"--resume {resume}: not a training checkpoint (no {TRAINING_STATE}); pass a "
                          f"checkpoint-<epoch>-<step> folder or --resume auto")
    try:
        return (folder, *read_training_checkpoint(folder))
    except DamagedCheckpointError as err:
        others = [p for p in list_checkpoints(folder.parent) if p.resolve() != folder.resolve()]
        found = newest_intact(others)
        hint = (f"the newest intact checkpoint is {found[0]}: rerun with --resume {found[0]}" if found
                else f"no intact checkpoint in {folder.parent}")
        raise ResumeError(f"--resume {resume}: {err}; {hint}") from None


def restore_training_checkpoint(folder: Path, state: dict, weights: dict, model, optimizer, scheduler, scaler,
                                env: DistEnv) -> Progress:
    """Restore weights, optimizer, scheduler, scaler and this rank's RNG; return where to continue."""
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    # The saved groups carry the implementation the saving run chose (fused, or foreach under FSDP); this run's
    # own choice must survive the load, e.g. when a DDP checkpoint is resumed under FSDP.
    implementations = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    for group, chosen in zip(optimizer.param_groups, implementations):
        group.update(chosen)
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if state["world_size"] == env.world_size:
        restore_rng_state(state["rng"][env.rank])
    else:
        # The data order is rank-count independent only per epoch; RNG streams cannot be mapped across sizes.
        log.warning("%s was written by %d processes, resuming with %d: RNG streams restart from the seed (the data "
                    "position is kept)", folder, state["world_size"], env.world_size)
    return Progress(**state["progress"])


# ---------------------------------------------------------------------------------------------------- best

def read_best(output_dir: Path) -> dict[str, Any] | None:
    path = Path(output_dir) / BEST_RECORD
    return read_json(path, "best-checkpoint record") if path.is_file() else None


def update_best(output_dir: Path, checkpoint: Path, metrics: dict[str, float], metric: str = "CIDEr",
                training_args: dict | None = None, split: str = "val") -> bool:
    """Keep ``output_dir/best_checkpoint/`` = the checkpoint with the highest validation ``metric`` (hard links,
    so it costs no space; safe because checkpoint files are only ever replaced by rename, never rewritten), with
    a ``README.md`` model card holding the validation metrics of ``split`` and the training flags."""
    if metric not in metrics:
        return False
    best = read_best(output_dir)
    if best is not None and best["score"] >= metrics[metric]:
        return False
    output_dir = Path(output_dir)
    with atomic_folder(output_dir / BEST_DIR) as staging:
        for path in checkpoint.iterdir():
            if path.is_file():
                try:
                    os.link(path, staging / path.name)
                except OSError:
                    shutil.copy2(path, staging / path.name)
        # A new file written by rename: the hard-linked checkpoint files stay untouched.
        write_checkpoint_card(staging, metrics, split=split, training_args=training_args,
                              model_name=output_dir.name)
    record = {"checkpoint": checkpoint.name, "metric": metric, "score": metrics[metric], "metrics": metrics}
    write_text_atomic(output_dir / BEST_RECORD, json.dumps(record, indent=2))
    return True

