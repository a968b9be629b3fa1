"""Training step from cached encoder features vs end to end with frozen encoders, side by side in one run.

Paper size by default: batch 2, 32 frames at 224 px, 10 s of audio, text length 300, the paper model. Both modes
train the same parameters (``fc``, ``passt.linear``, text transformer, learned mask) with AdamW, as
``avlformer train`` does with and without ``--features``: end to end runs Video Swin and PaSST (frozen, eval mode)
on every step; the cached mode reads the two clips' features from a feature file (fp16, as
``extract-features`` stores by default) and runs only the layers above. Also measured: the encoders' throughput
(clips/s, the compute part of ``extract-features``; JPEG/mp3 decoding not included) and the storage per clip.

CPU fp32 by default; on a GPU (``--device cuda``) bf16 autocast. ``--quick`` = one timed step per mode and no
warm-up (the paper-size end-to-end step takes minutes on a small CPU). The modes alternate step by step; wall
and CPU (process) times are both reported. Prints one JSON object as the last line: ``speedup`` = end-to-end
wall seconds per step / cached ones (``speedup_cpu_time``: the same in CPU time, steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from avlformer.atomic import atomic_path  # noqa: E402
from avlformer.data.features import FeatureFile, to_storage, write_feature_file  # noqa: E402
from avlformer.data.recipe import PreprocessRecipe  # noqa: E402
from avlformer.data.token_ids import CLS_ID, MASK_ID, SEP_ID  # noqa: E402
from avlformer.device import resolve_device  # noqa: E402
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig  # noqa: E402
from avlformer.training.features import collate_features, encoder_spec, freeze_encoders  # noqa: E402
from avlformer.training.optim import build_optimizer  # noqa: E402

FAVDBENCH_CLIPS = 7500 + 1500 + 1000  # train + val + test


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-length", type=int, default=300)
    parser.add_argument("--preset", default="paper", choices=("paper", "tiny"))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per mode first (default 1)")
    parser.add_argument("--quick", action="store_true", help="--steps 1 --warmup 0")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 1, 0
    return args


def text_batch(batch_size: int, length: int, generator: torch.Generator) -> dict:
    text_len = max(3, length - 40)
    target = torch.randint(1000, 30000, (batch_size, length), generator=generator)
    target[:, 0], target[:, text_len - 1], target[:, text_len:] = CLS_ID, SEP_ID, 0
    masked_pos = torch.zeros(batch_size, length, dtype=torch.bool)
    for row in range(batch_size):
        masked_pos[row, torch.randperm(text_len - 2, generator=generator)[: round(0.25 * text_len)] + 1] = True
    return {"video_keys": [f"clip{i}" for i in range(batch_size)], "input_ids": target.masked_fill(masked_pos,
            MASK_ID), "target_ids": target, "masked_pos": masked_pos,
            "text_len": torch.full((batch_size,), text_len, dtype=torch.int64)}


def timed(steps: dict, count: int, warmup: int, device: torch.device) -> dict:
    """Wall and CPU (process) seconds per step of each mode. The modes alternate step by step, so a load that
    other processes put on a shared machine falls on both alike; CPU time is less sensitive to that load still."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(count):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    config = AVLFormerConfig.paper() if args.preset == "paper" else AVLFormerConfig.tiny()
    tree = config.to_dict()
    tree.update(num_frames=args.num_frames, image_size=args.image_size, max_seq_length=args.text_length)
    config = AVLFormerConfig.from_dict(tree)
    torch.manual_seed(0)
    model = AVLFormer(config).to(device)
    freeze_encoders(model)
    optimizer = build_optimizer(model, 1e-4, 0.05, 0.2, 1e-8)
    generator = torch.Generator().manual_seed(0)
    media = {"frames": torch.randn(args.batch_size, config.num_frames, 3, config.image_size, config.image_size,
                                   generator=generator),
             "audio": 0.1 * torch.randn(args.batch_size, 1, config.audio.clip_samples, generator=generator)}
    media = {k: v.to(device) for k, v in media.items()}
    text = {k: v.to(device) if torch.is_tensor(v) else v
            for k, v in text_batch(args.batch_size, config.max_seq_length, generator).items()}

    # the cache: what extract-features computes, stored the way it stores it
    start = time.perf_counter()
    with torch.no_grad(), autocast():
        video, audio = model.encoder_outputs(media["frames"], media["audio"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    encoder_seconds = time.perf_counter() - start
    spec = encoder_spec(model, "fp16")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.features.h5"
        with atomic_path(path) as tmp:
            write_feature_file(tmp, spec, PreprocessRecipe.paper(), "bench.yaml", text["video_keys"],
                               ((to_storage(video[i], "fp16"), to_storage(audio[i], "fp16"))
                                for i in range(args.batch_size)))
        file_bytes = path.stat().st_size
        cache = FeatureFile(path)

        def step(batch_of):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = model(batch_of())["loss"]
            loss.backward()
            optimizer.step()

        def cached_batch():
            items = []
            for row in range(args.batch_size):
                clip_video, clip_audio = cache.clip(row)
                items.append({"video_key": text["video_keys"][row], "video_features": clip_video,
                              "audio_features": clip_audio})
            features = collate_features(items)
            return {**text, "video_features": features["video_features"].to(device),
                    "audio_features": features["audio_features"].to(device)}

        model.train()
        freeze_encoders(model)  # the encoders stay in eval mode, as in `train --features`
        times = timed({"features": lambda: step(cached_batch), "end_to_end": lambda: step(lambda: {**text, **media})},
                      args.steps, args.warmup, device)
        cache.close()
    per_clip = {"fp16": spec.num_video_tokens * spec.video_dim * 2 + spec.num_audio_tokens * spec.audio_dim * 2}
    per_clip["fp32"] = per_clip["fp16"] * 2
    median = {name: {kind: statistics.median(values) for kind, values in modes.items()}
              for name, modes in times.items()}
    result = {
        "speedup": round(median["end_to_end"]["wall"] / median["features"]["wall"], 2),
        "speedup_cpu_time": round(median["end_to_end"]["cpu"] / median["features"]["cpu"], 2),
        "seconds_per_step": {name: round(m["wall"], 3) for name, m in median.items()},
        "cpu_seconds_per_step": {name: round(m["cpu"], 3) for name, m in median.items()},
        "step_times": {name: [round(t, 3) for t in modes["wall"]] for name, modes in times.items()},
        "bytes_per_clip": per_clip["fp16"], "bytes_per_clip_fp32": per_clip["fp32"],
        "feature_file_bytes_per_clip": file_bytes // args.batch_size,
        "favdbench_gb_fp16": round(per_clip["fp16"] * FAVDBENCH_CLIPS / 1e9, 1),
        "extraction_clips_per_second": round(args.batch_size / encoder_seconds, 3),
        "tokens": {"video": spec.num_video_tokens, "video_dim": spec.video_dim, "audio": spec.num_audio_tokens,
                   "audio_dim": spec.audio_dim},
        "device": str(device), "dtype": dtype, "threads": torch.get_num_threads(), "preset": args.preset,
        "batch_size": args.batch_size, "num_frames": config.num_frames, "image_size": config.image_size,
        "text_length": config.max_seq_length, "steps": args.steps, "warmup": args.warmup,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
