"""`avlformer extract-features`: run the frozen encoders once over prepared splits and cache their outputs
(format: data/features.py; docs/training.md, Fast experiments on cached features). Resumable per clip.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from avlformer.atomic import atomic_path, atomic_write, write_text_atomic
from avlformer.data.features import (STORAGE_DTYPES, FeatureFile, FeatureSpec, feature_path, to_storage,
                                     write_feature_file)
from avlformer.error_text import one_line
from avlformer.output_paths import output_folder_problem
from avlformer.training.trainer import autocast_for

WORK = ".work"
INTERRUPTED = 130  # the shell's code for SIGINT, as `avlformer train`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, help="prepared data folder (`avlformer prepare --out`)")
    parser.add_argument("--model", default="", help="checkpoint whose encoders to use (ours, an upstream folder or "
                        "a released model.bin)")
    parser.add_argument("--swin-checkpoint", default="", help="official Video Swin .pth (with --passt-checkpoint, "
                        "instead of --model)")
    parser.add_argument("--passt-checkpoint", default="", help="official PaSST .pt (with --swin-checkpoint)")
    parser.add_argument("--video-encoder", default="", help="the video encoder instead of --model: hf:FOLDER (a "
                        "Hugging Face video or image model, its weights from the folder; docs/models.md) or a "
                        "registered part with --swin-checkpoint")
    parser.add_argument("--audio-encoder", default="", help="the audio encoder instead of --model: hf:FOLDER (a "
                        "Hugging Face audio model) or a registered part with --passt-checkpoint")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let code in a Hugging Face folder run (off: it never does)")
    parser.add_argument("--model-preset", default="paper", choices=("paper", "tiny"),
                        help="model shape without --model (default: paper)")
    parser.add_argument("--model-config", default="", help="AVLFormerConfig JSON; replaces --model-preset")
    parser.add_argument("--splits", nargs="+", default=["train"],
                        help="splits to extract, each a metadata/<split>_<N>frames.yaml (default: train, the one "
                        "`train --features` reads; validation decodes the raw val split)")
    parser.add_argument("--out", default="", help="output folder (default: <data-dir>/features)")
    parser.add_argument("--precision", default="fp16", choices=tuple(STORAGE_DTYPES),
                        help="precision the encoders run in and the features are stored in (default: fp16)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per encoder batch (default: 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def split_line(split: str, path: Path, clips: int, computed: int, seconds: float, bytes_per_clip: int) -> str:
    """What extract-features prints for a split it extracted (or found already extracted)."""
    rate = f"{computed / seconds:.2f} clips/s" if computed and seconds > 0 else "-"
    return (f"{split}: {clips} clips ({computed} computed now, {clips - computed} reused) in {seconds:.1f} s = "
            f"{rate}; {bytes_per_clip / 1e6:.3f} MB per clip -> {path}")


# ------------------------------------------------------------------------------------------------ inputs

ENCODER_SOURCES = {"video": ("video_encoder", "swin_checkpoint"), "audio": ("audio_encoder", "passt_checkpoint")}


def load_encoders(args, device: torch.device):
    """The model whose encoders run: a checkpoint's (--model), or the preset's shape with each encoder chosen as
    ``train`` chooses it (--video-encoder/--audio-encoder, training/part_flags.py), its weights from its Hugging
    Face folder or its checkpoint flag; ``train --features`` with the same flags finds the same encoders."""
    from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig

    given = [flag for flags in ENCODER_SOURCES.values() for flag in flags if getattr(args, flag)]
    if args.model and given:
        raise ValueError(f"give --model, or the encoders (--{given[0].replace('_', '-')}, ...), not both")
    if args.model:
        from avlformer.modeling.checkpoint import load_model

        model = load_model(args.model, "cpu")[0]
    elif given:
        from avlformer.training.args import base_model_tree
        from avlformer.training.config import InitSettings
        from avlformer.training.part_flags import choose_parts

        tree = base_model_tree(args.model_preset, args.model_config)
        choose_parts(tree, InitSettings(video_encoder=args.video_encoder, audio_encoder=args.audio_encoder,
                                        trust_remote_code=args.trust_remote_code))
        config = AVLFormerConfig.from_dict(tree)
        sources = {}
        for role, (part_flag, checkpoint_flag) in ENCODER_SOURCES.items():
            folder, checkpoint = getattr(getattr(config, role), "path", ""), getattr(args, checkpoint_flag)
            if folder and checkpoint:
                raise ValueError(f"--{checkpoint_flag.replace('_', '-')} does not apply to --"
                                   f"{part_flag.replace('_', '-')} {getattr(args, part_flag)} (its weights are "
                                   f"the folder's)")
            if not (folder or checkpoint):
                raise ValueError(f"no weights for the {role} encoder: give --{part_flag.replace('_', '-')} "
                                   f"hf:FOLDER or --{checkpoint_flag.replace('_', '-')} FILE")
            sources[role] = folder or checkpoint
        model = AVLFormer(config)
        for role, source in sources.items():
            model.load_part_weights(role, source)
    else:
        raise ValueError("which encoders? give --model CKPT, or --video-encoder/--swin-checkpoint and "
                           "--audio-encoder/--passt-checkpoint")
    model.eval().requires_grad_(False)
    return model.to(device)


def split_yamls(data_dir: Path, splits: list[str]) -> dict[str, Path]:
    metadata = data_dir / "metadata"
    if not metadata.is_dir():
        raise ValueError(f"{data_dir}: no metadata/ folder (is it the output of `avlformer prepare`?)")
    found: dict[str, list[Path]] = {}
    for path in sorted(metadata.glob("*_*frames.yaml")):
        found.setdefault(path.stem.rsplit("_", 1)[0], []).append(path)
    chosen = {}
    for split in splits:
        paths = found.get(split, [])
        if len(paths) != 1:
            what = "no" if not paths else f"{len(paths)} ({', '.join(p.name for p in paths)})"
            raise ValueError(f"{metadata}: {what} yaml for split '{split}' (expected one {split}_<N>frames.yaml)")
        chosen[split] = paths[0]
    return chosen


# ------------------------------------------------------------------------------------------------ one split

def extract_split(model, spec: FeatureSpec, split: str, yaml_path: Path, out: Path, batch_size: int,
                  num_workers: int, device: torch.device) -> str:
    from avlformer.data.dataset import CaptionDataset, DataConfig, collate

    cfg = model.config
    data_config = DataConfig(num_frames=cfg.num_frames, image_size=cfg.image_size,
                             sample_rate=cfg.audio.sample_rate, clip_seconds=cfg.audio.clip_seconds)
    dataset = CaptionDataset(yaml_path, data_config, is_train=False)
    keys, recipe = dataset.keys, dataset.recipe
    target = feature_path(out, yaml_path)
    itemsize = np.dtype(STORAGE_DTYPES[spec.dtype]).itemsize
    bytes_per_clip = (spec.num_video_tokens * spec.video_dim + spec.num_audio_tokens * spec.audio_dim) * itemsize
    if target.exists():
        existing = FeatureFile(target)
        if existing.spec == spec and existing.keys == keys and existing.recipe == recipe:
            return split_line(split, target, len(keys), 0, 0.0, bytes_per_clip)
        raise ValueError(f"{target} already holds features of other encoders, settings or data; delete it or "
                           f"choose another --out")
    work = out / WORK / yaml_path.stem
    identity = json.dumps({"spec": spec.to_json(), "recipe": recipe.to_dict(),
                           "keys": hashlib.sha256("\n".join(keys).encode()).hexdigest()}, sort_keys=True)
    marker = work / "work.json"
    if marker.is_file() and marker.read_text(encoding="utf-8") != identity:
        print(f"extract-features: {work}: discarding an unfinished extraction made with other encoders, settings "
              f"or data", file=sys.stderr)
        shutil.rmtree(work)
    write_text_atomic(marker, identity)
    todo = [row for row in range(len(keys)) if not (work / f"{row}.npz").is_file()]
    start = time.perf_counter()
    if todo:
        loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=collate, shuffle=False)
        autocast = autocast_for(spec.dtype, device)()
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=f"extract {split}", unit="clip",
                   dynamic_ncols=True)
        try:
            for rows, batch in zip(batches, loader):
                with torch.no_grad(), autocast:
                    video, audio = model.encoder_outputs(batch["frames"].to(device), batch["audio"].to(device))
                for i, row in enumerate(rows):
                    with atomic_write(work / f"{row}.npz", "wb") as handle:
                        np.savez(handle, video=to_storage(video[i], spec.dtype),
                                 audio=to_storage(audio[i], spec.dtype))
                bar.update(len(rows))
        finally:
            bar.close()
    seconds = time.perf_counter() - start

    def stored_clips():
        for row in range(len(keys)):
            with np.load(work / f"{row}.npz") as part:
                yield part["video"], part["audio"]

    with atomic_path(target) as tmp:
        write_feature_file(tmp, spec, recipe, yaml_path.name, keys, stored_clips())
    shutil.rmtree(work)
    with contextlib.suppress(OSError):
        (out / WORK).rmdir()  # only when no other split's work is left
    return split_line(split, target, len(keys), len(todo), seconds, bytes_per_clip)


# ------------------------------------------------------------------------------------------------ the command

def main(args: argparse.Namespace) -> int:
    from avlformer.device import resolve_device
    from avlformer.training.features import encoder_spec

    out = None
    try:
        if args.batch_size < 1 or args.num_workers < 0:
            raise ValueError("--batch-size must be >= 1 and --num-workers >= 0")
        device = resolve_device(args.device)
        data_dir = Path(args.data_dir)
        yamls = split_yamls(data_dir, args.splits)
        out = Path(args.out) if args.out else data_dir / "features"
        if problem := output_folder_problem(out, "--out"):
            raise ValueError(problem)
        model = load_encoders(args, device)
        spec = encoder_spec(model, args.precision)
        for split, yaml_path in yamls.items():
            print(extract_split(model, spec, split, yaml_path, out, args.batch_size, args.num_workers, device))
    except (ValueError, FileNotFoundError) as err:  # a user's mistake or bad input, named in the message
        print(f"avlformer extract-features: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = (f"the clips finished so far are kept under {out / WORK}; rerun the same command to continue"
                if out is not None else "nothing was written")
        print(f"\navlformer extract-features: interrupted; {kept}", file=sys.stderr)
        return INTERRUPTED
    return 0
