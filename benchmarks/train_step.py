"""One training step of the full AVLFormer (forward + backward + AdamW): time and peak memory.

Default = the paper setting (32 frames at 224 px, 10 s audio, 1257 AV tokens, text length 300), batch 1, SDPA
attention, with and without activation checkpointing (checkpointing = ``AVLFormer.set_activation_checkpointing()``'s
default parts, see docs/training.md "Training speed and memory"). On CPU the variants are fp32; on CUDA bf16
autocast. ``--attention eager`` / ``--dtypes fp32`` add the slower reference variants, ``--memory-scaling`` adds peak
memory at 8, 16 and 32 frames. Each variant runs in its own subprocess, so its peak memory (CPU max RSS of the
process, or CUDA max allocated) is its own; the timed step follows ``--warmup`` untimed ones.

The JSON quotes the one side-by-side run of the original FAVDBench code next to ours (``original_side_by_side``:
its machine, day and both figures, from benchmarks/results/side_by_side.jsonl); it does not divide this run's time
by the original's, which was measured on another day. Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from avlformer.data.token_ids import CLS_ID, MASK_ID, SEP_ID  # noqa: E402
from avlformer.device import resolve_device  # noqa: E402
from avlformer.modeling.avlformer import WORTH_CHECKPOINTING, AVLFormer, AVLFormerConfig  # noqa: E402
from avlformer.training.optim import build_optimizer, parameter_groups  # noqa: E402
from report import side_by_side  # noqa: E402

MEMORY_SCALING_FRAMES = (8, 16, 32)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu", help="comma list of cpu,cuda (default cpu)")
    parser.add_argument("--batch", type=int, default=1, help="clips per step")
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--attention", default="sdpa", help="comma list of sdpa,eager (default sdpa)")
    parser.add_argument("--dtypes", default="", help="comma list of fp32,bf16; default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--checkpointing", default="off,on", help="comma list of off,on (default both)")
    parser.add_argument("--memory-scaling", action="store_true",
                        help=f"also peak memory at {', '.join(map(str, MEMORY_SCALING_FRAMES))} frames "
                             "(checkpointing on, first dtype and attention)")
    parser.add_argument("--optimizer", choices=("fused", "foreach"), default="fused",
                        help="fused: the optimizer training builds; foreach: torch's default AdamW, same groups")
    parser.add_argument("--no-thp", action="store_true",
                        help="do not set THP_MEM_ALLOC_ENABLE=1 (transparent huge pages for large CPU tensors)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed one")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = parser.parse_args(argv)
    if args.batch < 1 or args.warmup < 0:
        parser.error("--batch must be >= 1 and --warmup >= 0")
    return args


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise ValueError(f"{flag}: expected a comma list of {', '.join(allowed)}, got {text!r}")
    return values


def variants(args, device: str) -> list[dict]:
    dtypes = _choices(args.dtypes, ("fp32", "bf16"), "--dtypes") if args.dtypes else \
        (["bf16"] if device == "cuda" else ["fp32"])
    attentions = _choices(args.attention, ("sdpa", "eager"), "--attention")
    checkpointing = _choices(args.checkpointing, ("off", "on"), "--checkpointing")
    specs = [{"device": device, "dtype": dtype, "attention": attention, "checkpointing": state == "on",
              "num_frames": args.num_frames}
             for dtype in dtypes for attention in attentions for state in checkpointing]
    if args.memory_scaling:
        specs += [{**specs[0], "checkpointing": True, "num_frames": frames, "memory_scaling": True}
                  for frames in MEMORY_SCALING_FRAMES]
    return specs


def make_batch(config: AVLFormerConfig, device, batch_size: int = 1, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    length = config.max_seq_length
    text_len = length - 40
    target = torch.randint(1000, 30000, (batch_size, length), generator=generator)
    target[:, 0], target[:, text_len - 1], target[:, text_len:] = CLS_ID, SEP_ID, 0
    masked_pos = torch.zeros(batch_size, length, dtype=torch.bool)
    for row in range(batch_size):
        masked_pos[row, torch.randperm(text_len - 1, generator=generator)[: round(0.25 * text_len)] + 1] = True
    input_ids = target.masked_fill(masked_pos, MASK_ID)
    frames = torch.randn(batch_size, config.num_frames, 3, config.image_size, config.image_size, generator=generator)
    audio = torch.randn(batch_size, 1, config.audio.clip_samples, generator=generator) * 0.1
    batch = dict(frames=frames, audio=audio, input_ids=input_ids, target_ids=target, masked_pos=masked_pos,
                 text_len=torch.full((batch_size,), text_len))
    return {k: v.to(device) for k, v in batch.items()}


def use_eager_attention(model: AVLFormer) -> None:
    for layer in model.part("text").bert.encoder.layer:
        layer.attention.self.implementation = "eager"
    for module in model.part("audio").modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # timm's textbook attention path


def run_variant(spec: dict, args) -> dict:
    device = torch.device(spec["device"])
    config = AVLFormerConfig.paper()
    config.num_frames, config.image_size = spec["num_frames"], args.image_size
    config = AVLFormerConfig.from_dict(config.to_dict())  # re-validate, recompute the AV token count
    torch.manual_seed(0)
    model = AVLFormer(config).to(device).train()
    if spec["attention"] == "eager":
        use_eager_attention(model)
    model.set_activation_checkpointing(WORTH_CHECKPOINTING if spec["checkpointing"] else ())
    if args.optimizer == "fused":  # exactly what training builds (training/optim.py)
        optimizer = build_optimizer(model, 1e-4, 0.05, 0.05, 1e-8)
    else:
        groups = parameter_groups(model.named_parameters(), 1e-4, 0.05, 0.05, backbone=model.part("video").parameters())
        optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=1e-8, foreach=True)
    batch = make_batch(config, device, args.batch)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()
        sync()
        middle = time.perf_counter()
        optimizer.step()
        sync()
        return float(loss), middle - start, time.perf_counter() - middle

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loss, forward_backward, optimizer_seconds = step()
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {**spec, "batch": args.batch, "checkpointed_parts": list(WORTH_CHECKPOINTING) if spec["checkpointing"]
            else [], "seconds_per_step": round(forward_backward + optimizer_seconds, 3),
            "forward_backward_seconds": round(forward_backward, 3), "optimizer_seconds": round(optimizer_seconds, 3),
            "peak_memory_gb": round(peak_gb, 2),
            "memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
            "loss": round(loss, 4), "num_av_tokens": config.num_av_tokens, "torch_threads": torch.get_num_threads()}


def run_in_subprocess(spec: dict, args) -> dict:
    command = [sys.executable, __file__, "--variant", json.dumps(spec), "--batch", str(args.batch),
               "--image-size", str(args.image_size), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--optimizer", args.optimizer]
    env = dict(os.environ)
    if args.no_thp:
        env.pop("THP_MEM_ALLOC_ENABLE", None)
    else:
        # Read once by torch's CPU allocator at start-up: large tensors get huge pages, so the many GB a step
        # allocates and frees cost a few thousand page faults instead of millions.
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        return {**spec, "error": (completed.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1],
                "returncode": completed.returncode}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(json.loads(args.variant), args)))
        return 0
    try:  # the one device rule: an explicit cuda without CUDA is an error, not a silent CPU run
        devices = [resolve_device(name.strip()).type for name in args.devices.split(",")]
        specs = [spec for device in devices for spec in variants(args, device)]
    except ValueError as err:
        print(f"train_step.py: error: {err}", file=sys.stderr)
        return 2
    results = []
    for spec in specs:
        result = run_in_subprocess(spec, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    summary = {"benchmark": "train_step", "batch": args.batch, "num_frames": args.num_frames,
               "image_size": args.image_size,
               "paper_setting": args.num_frames == 32 and args.image_size == 224, "warmup_steps": args.warmup,
               "torch_threads": args.threads or torch.get_num_threads(), "optimizer": f"AdamW ({args.optimizer})",
               "thp_mem_alloc": not args.no_thp, "checkpointed_parts": list(WORTH_CHECKPOINTING),
               "results": [r for r in results if not r.get("memory_scaling")],
               "memory_scaling": [{"num_frames": r["num_frames"], "peak_memory_gb": r.get("peak_memory_gb"),
                                   "seconds_per_step": r.get("seconds_per_step")}
                                  for r in results if r.get("memory_scaling")] or None,
               "original_side_by_side": side_by_side("train_step")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
