"""Validation during training: greedy (or beam) decoding of the val split on every rank's shard, gathered on
rank 0, scored with the COCO caption metrics, written beside the checkpoint as upstream did
(docs/upstream.md §4.4)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from tqdm import tqdm

from avlformer.atomic import write_text_atomic
from avlformer.data.tokenizer import decode_caption
from avlformer.training.distributed import DistEnv, gather_objects, unwrap_model
from avlformer.json_files import read_json


def prediction_stem(val_yaml: str, num_beams: int, max_gen_length: int) -> str:
    """Upstream's name: pred.<yaml parent dir unless coco_caption>.<yaml stem>.beam<k>.max<L>."""
    path = Path(val_yaml)
    parts = ["pred"]
    if path.parent.name and path.parent.name != "coco_caption":
        parts.append(path.parent.name)
    parts += [path.stem, f"beam{num_beams}", f"max{max_gen_length}"]
    return ".".join(parts)


@contextlib.contextmanager
def full_parameters(model: torch.nn.Module):
    """FSDP2 shards parameters between forwards; decoding calls submodules directly, so gather them first."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        yield
        return
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in sharded:
        module.unshard()
    try:
        yield
    finally:
        for module in sharded:
            module.reshard()


@torch.no_grad()
def decode_split(model: torch.nn.Module, loader, env: DistEnv, autocast, tokenizer=None) -> tuple[dict, dict]:
    """{key: caption} predictions and {key: [reference]} on rank 0 (empty dicts elsewhere), decoded with the
    model configuration's settings (``num_beams``, ``max_gen_length``, ``length_penalty``); ``tokenizer``: the
    decoder's (default: the shipped BERT vocabulary)."""
    library_model = unwrap_model(model)  # its generate() decodes in eval mode and restores the caller's
    predictions, references = {}, {}
    batches = tqdm(loader, desc="validate", disable=not env.is_main, leave=False)
    with full_parameters(model):
        for batch in batches:
            frames = batch["frames"].to(env.device, non_blocking=True)
            audio = batch["audio"].to(env.device, non_blocking=True)
            with autocast():
                output = library_model.generate(frames, audio)
            for row, key in enumerate(batch["video_keys"]):
                predictions[key] = decode_caption(output.token_ids[row].tolist(), tokenizer)
                if "captions" in batch:
                    reference = batch["captions"][row]
                    references[key] = reference if isinstance(reference, list) else [reference]
    merged_predictions, merged_references = {}, {}
    for part_predictions, part_references in gather_objects((predictions, references), env):
        merged_predictions.update(part_predictions)  # the padded last shard repeats keys: same caption
        merged_references.update(part_references)
    return (merged_predictions, merged_references) if env.is_main else ({}, {})


def score(predictions: dict, references: dict) -> tuple[dict[str, float], str | None]:
    """Metrics, or an empty dict and the reason they could not be computed (training goes on either way)."""
    if not references:
        return {}, "the validation yaml has no reference captions"
    from avlformer.evaluation.coco_metrics import caption_metrics

    try:
        return caption_metrics(predictions, references), None
    except (RuntimeError, ValueError) as err:
        return {}, str(err)


def write_outputs(checkpoint: Path, stem: str, predictions: dict, metrics: dict) -> None:
    coco = [{"image_id": key, "caption": caption} for key, caption in sorted(predictions.items())]
    write_text_atomic(checkpoint / f"{stem}_coco_format.json", json.dumps(coco, indent=1))
    if metrics:
        write_text_atomic(checkpoint / f"{stem}.eval.json", json.dumps(metrics, indent=4))


def append_history(output_dir: Path, val_yaml: str, entry: dict) -> None:
    """Upstream's eval log: <val_yaml with '/' -> '_'>eval_logs.json, a list of metric dicts."""
    path = Path(output_dir) / (val_yaml.replace("/", "_") + "eval_logs.json")
    history = read_json(path, "validation history") if path.is_file() else []
    history.append(entry)
    write_text_atomic(path, json.dumps(history, indent=2))
