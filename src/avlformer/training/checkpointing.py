"""Training checkpoints: ``output_dir/checkpoint-<epoch>-<step>/`` = a model checkpoint (``modeling.checkpoint``) +
``training_state.pt`` for an exact ``--resume``, and the rules of the output folder (docs/training.md, Output
folder and Resuming).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from avlformer.atomic import atomic_folder, finish_interrupted_swaps, write_text_atomic
from avlformer.error_text import one_line
from avlformer.folder_lock import folder_lock
from avlformer.training.distributed import DistEnv, any_rank_true, barrier, gather_objects
from avlformer.training.flag_table import ArgumentError, upstream_values
from avlformer.json_files import read_json
from avlformer.model_card import write_model_card

TRAINING_STATE = "training_state.pt"
TRAIN_LOCK = ".train.lock"
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


def save_training_checkpoint(output_dir: Path, name: str, model: torch.nn.Module, model_config, recipe, optimizer,
                             scheduler, scaler, progress: Progress, env: DistEnv, vocab_dir: str | None = None) -> Path:
    """Collective: every rank must call it (FSDP gathers shards, every rank contributes its RNG state)."""
    from avlformer.modeling.checkpoint import write_checkpoint_files

    final = Path(output_dir) / name
    model_state = get_model_state_dict(model, options=FULL_STATE)
    optim_state = get_optimizer_state_dict(model, optimizer, options=FULL_STATE)
    rng_states = gather_objects(capture_rng_state(), env)
    failure = None
    if env.is_main:
        training_state = {
            "progress": asdict(progress),
            "world_size": env.world_size,
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),  # empty unless fp16 loss scaling is on
            "rng": rng_states,
        }
        try:
            with atomic_folder(final) as staging:
                # Weights come from the gathered full state: under FSDP the model itself holds only shards.
                write_checkpoint_files(staging, model_state, model_config, recipe, vocab_dir=vocab_dir)
                # Through a Python file: a failed write then raises OSError with its errno (ENOSPC), where
                # torch's own file writer only says "enforce fail".
                with open(staging / TRAINING_STATE, "wb") as handle:
                    torch.save(training_state, handle)
        except (OSError, RuntimeError) as error:
            failure = save_failure_message(final, error)
    if any_rank_true(failure is not None, env):  # every rank stops, not only the one that wrote
        raise CheckpointSaveError(failure or f"{final}: the main process could not write the checkpoint")
    barrier(env)
    return final


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (full disk, I/O error); the earlier checkpoints are untouched."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 64 * 2**20  # less than this free after a failed write: the write failed for want of space


def save_failure_message(final: Path, error: BaseException) -> str:
    """One line: why ``final`` was not written, and that the earlier checkpoints are intact."""
    folder = final.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    earlier = list_checkpoints(folder)
    kept = f"the last checkpoint {earlier[-1]} is intact" if earlier else "no earlier checkpoint was touched"
    if getattr(error, "errno", None) in NO_SPACE_ERRNOS or (free is not None and free < LOW_SPACE_BYTES):
        shown = f"{free / 2**20:.0f} MiB free" if free is not None else "free space unknown"
        return (f"no space left on the device holding {folder} ({shown}) while writing {final.name}; {kept}: "
                f"free some space and rerun with --resume auto")
    return f"could not write checkpoint {final} ({one_line(error)}); {kept}"


def tidy_interrupted_saves(folder: Path) -> None:
    """Finish (or roll back) the checkpoint swaps a killed run left half done, then delete the leftovers of saves
    killed midway (docs/training.md, Output folder). Main process only, before any process lists checkpoints."""
    for restored in finish_interrupted_swaps(folder):
        log.warning("%s: finished a checkpoint save that was interrupted between its two renames", restored)
    for path in Path(folder).glob(".*"):  # glob: a folder that does not exist has nothing to tidy
        if path.is_dir() and _half_saved(path):
            shutil.rmtree(path, ignore_errors=True)


def _half_saved(path: Path) -> bool:
    """A checkpoint (or best checkpoint) folder still under its staging or swap name."""
    return path.name.startswith((".checkpoint-", f".{BEST_DIR}.")) and path.name.endswith((".tmp", ".old"))


def earlier_run(output_dir: Path) -> list[Path]:
    """What an earlier training run left in ``output_dir``: checkpoints (also half-swapped ones), the best
    checkpoint and its record, validation histories, ``log/args.json`` and TensorBoard event files."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [path for path in output_dir.iterdir() if CHECKPOINT_NAME.match(path.name)
             or path.name in (BEST_DIR, BEST_RECORD) or path.name.endswith("eval_logs.json") or _half_saved(path)]
    log_dir = output_dir / "log"
    if log_dir.is_dir():
        found += [path for path in log_dir.iterdir() if path.name == "args.json"
                  or path.name.startswith("events.out.tfevents.")]
    return sorted(found)


def check_output_dir(output_dir: Path, resume: str, overwrite: bool) -> None:
    """An --output_dir holding an earlier run is continued (--resume) or replaced (--overwrite_output_dir), never
    silently mixed with a new run."""
    if resume and overwrite:
        raise ArgumentError("--resume continues the run in --output_dir and --overwrite_output_dir deletes it; "
                            "give one of them")
    found = earlier_run(output_dir)
    if found and not resume and not overwrite:
        shown = ", ".join(str(path.relative_to(output_dir)) for path in found[:3]) + (", ..." if len(found) > 3
                                                                                     else "")
        raise ArgumentError(f"--output_dir {output_dir} holds an earlier run ({shown}); continue it with --resume "
                            f"auto, replace it with --overwrite_output_dir, or choose another --output_dir")


@contextlib.contextmanager
def claim_output_dir(output_dir: Path, resume: str, overwrite: bool, env: DistEnv) -> Iterator[None]:
    """Hold --output_dir for one run (collective; docs/training.md, One run per folder): the main process checks,
    locks and tidies it; every process stops together when it refused."""
    from avlformer.output_paths import output_folder_problem

    output_dir = Path(output_dir)
    with contextlib.ExitStack() as held:
        refused = None
        if env.is_main:
            try:
                if problem := output_folder_problem(output_dir, "--output_dir"):
                    raise ArgumentError(problem)
                output_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(folder_lock(output_dir / TRAIN_LOCK, f"another training is running in "
                                               f"{output_dir}; wait for it to end or choose another --output_dir",
                                               ArgumentError))
                check_output_dir(output_dir, resume, overwrite)
                tidy_interrupted_saves(output_dir)
                if resume and resume != "auto" and Path(resume).parent != output_dir:
                    tidy_interrupted_saves(Path(resume).parent)
            except ArgumentError as error:
                refused = error
        if any_rank_true(refused is not None, env):
            raise refused or ArgumentError(f"--output_dir {output_dir}: refused by the main process")
        yield


def remove_earlier_run(output_dir: Path) -> None:
    """--overwrite_output_dir: delete what an earlier run left, so that the folder holds one run only (a later
    --resume auto must not pick up the old run's checkpoints)."""
    for path in earlier_run(output_dir):
        log.warning("--overwrite_output_dir: deleting %s of an earlier run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


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
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if state["world_size"] == env.world_size:
        restore_rng_state(state["rng"][env.rank])
    else:
        # The data order is rank-count independent only per epoch; RNG streams cannot be mapped across sizes.
        log.warning("%s was written by %d processes, resuming with %d: RNG streams restart from the seed (the data "
                    "position is kept)", folder, state["world_size"], env.world_size)
    return Progress(**state["progress"])


def read_best(output_dir: Path) -> dict[str, Any] | None:
    path = Path(output_dir) / BEST_RECORD
    return read_json(path, "best-checkpoint record") if path.is_file() else None


def update_best(output_dir: Path, checkpoint: Path, metrics: dict[str, float], config, recipe) -> bool:
    """Keep ``output_dir/best_checkpoint/`` = the checkpoint with the highest validation CIDEr (hard links,
    so it costs no space; safe because checkpoint files are only ever replaced by rename, never rewritten), with
    a ``README.md`` model card holding the validation metrics and the training flags (of the run's ``config``,
    whose model and ``recipe`` the checkpoint holds)."""
    metric = "CIDEr"
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
        write_model_card(staging, config.model, recipe, metrics, "val", upstream_values(config),
                         model_name=output_dir.name)
    record = {"checkpoint": checkpoint.name, "metric": metric, "score": metrics[metric], "metrics": metrics}
    write_text_atomic(output_dir / BEST_RECORD, json.dumps(record, indent=2))
    return True

