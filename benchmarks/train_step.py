"""One training step of the full AVLFormer (forward + backward + AdamW), batch 1: time and peak memory.

Variants: activation checkpointing off/on, attention SDPA vs eager (text transformer and PaSST blocks; the Video
Swin window attention is torchvision's and is the same in both), and on GPU fp32 vs bf16 autocast. Each variant
runs in its own subprocess so its peak memory (CUDA max allocated, or CPU max RSS) is its own.

Key speedup = eager time / SDPA time (checkpointing off, fp32 on CPU or bf16 on GPU).
Default = the paper setting (32 frames at 224 px, 1257 AV tokens, text length 300). ``--num-frames`` /
``--image-size`` shrink the video for machines that cannot hold the paper step; the JSON records them.
Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
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
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu (+cuda if present)")
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed one")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    return parser.parse_args(argv)


def variants(device: str):
    dtypes = ["bf16", "fp32"] if device == "cuda" else ["fp32"]
    for dtype, attention, checkpointing in itertools.product(dtypes, ["sdpa", "eager"], [False, True]):
        yield {"device": device, "dtype": dtype, "attention": attention, "checkpointing": checkpointing}


def make_batch(config: AVLFormerConfig, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    length = config.max_seq_length
    text_len = length - 40
    target = torch.randint(1000, 30000, (1, length), generator=generator)
    target[0, 0], target[0, text_len - 1], target[0, text_len:] = CLS_ID, SEP_ID, 0
    masked_pos = torch.zeros(1, length, dtype=torch.bool)
    masked_pos[0, torch.randperm(text_len - 1, generator=generator)[: round(0.25 * text_len)] + 1] = True
    input_ids = target.masked_fill(masked_pos, MASK_ID)
    batch = dict(frames=torch.randn(1, config.num_frames, 3, config.image_size, config.image_size, generator=generator),
                 audio=torch.randn(1, 1, config.audio.clip_samples, generator=generator) * 0.1,
                 input_ids=input_ids, target_ids=target, masked_pos=masked_pos, text_len=torch.tensor([text_len]))
    return {k: v.to(device) for k, v in batch.items()}


def use_eager_attention(model: AVLFormer) -> None:
    for layer in model.trans_encoder.bert.encoder.layer:
        layer.attention.self.implementation = "eager"
    for module in model.passt.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False  # timm's textbook attention path


def run_variant(spec: dict, args) -> dict:
    device = torch.device(spec["device"])
    config = AVLFormerConfig.paper()
    config.num_frames, config.image_size = args.num_frames, args.image_size
    config = AVLFormerConfig.from_dict(config.to_dict())  # re-validate, recompute the AV token count
    torch.manual_seed(0)
    model = AVLFormer(config).to(device).train()
    if spec["attention"] == "eager":
        use_eager_attention(model)
    model.set_activation_checkpointing(spec["checkpointing"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    batch = make_batch(config, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if spec["dtype"] == "bf16" else nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        return float(loss)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {**spec, "seconds_per_step": round(seconds, 3), "peak_memory_gb": round(peak_gb, 2),
            "memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
            "loss": round(loss, 4), "num_av_tokens": config.num_av_tokens}


def run_in_subprocess(spec: dict, args) -> dict:
    command = [sys.executable, __file__, "--variant", json.dumps(spec), "--num-frames", str(args.num_frames),
               "--image-size", str(args.image_size), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        return {**spec, "error": (completed.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1],
                "returncode": completed.returncode}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def key_speedup(results, device, dtype):
    times = {r["attention"]: r.get("seconds_per_step") for r in results
             if r["device"] == device and r["dtype"] == dtype and not r["checkpointing"]}
    if times.get("eager") and times.get("sdpa"):
        return round(times["eager"] / times["sdpa"], 3)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(json.loads(args.variant), args)))
        return 0
    try:  # the one device rule: an explicit cuda without CUDA is an error, not a silent CPU run
        devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])) if args.devices == "auto" \
            else [resolve_device(name).type for name in args.devices.split(",")]
    except ValueError as err:
        print(f"train_step.py: error: {err}", file=sys.stderr)
        return 2
    results = []
    for device in devices:
        for spec in variants(device):
            result = run_in_subprocess(spec, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    summary = {"benchmark": "train_step", "batch": 1, "num_frames": args.num_frames, "image_size": args.image_size,
               "paper_setting": args.num_frames == 32 and args.image_size == 224, "warmup_steps": args.warmup,
               "torch_threads": torch.get_num_threads(), "results": results,
               "key_metric": "eager / SDPA seconds per step (checkpointing off)",
               "speedup_cpu_fp32": key_speedup(results, "cpu", "fp32"),
               "speedup_cuda_bf16": key_speedup(results, "cuda", "bf16")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
