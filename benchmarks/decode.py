"""Caption decoding speed: KV-cached greedy vs upstream's full re-forward, paper-size text transformer.

Setting (default = the paper): 12 layers, hidden 768, vocab 30522, 1257 AV tokens of 512, learned AV mask,
greedy to 115 tokens, batch 1; CPU fp32, and CUDA bf16 when a GPU is present. Random weights, with [SEP]
suppressed so every caption runs the full length (a random model would otherwise stop at an arbitrary step).
The AV encoders are not timed: both paths receive the same AV tokens.

Both paths run in this process and must produce identical token ids. On a slow machine,
``--reforward-steps N`` runs the re-forward baseline for N steps spread evenly over the caption instead of all
of them (each at its true prefix length, taken from the cached caption, with the predicted token checked against
it) and extrapolates its total by linear interpolation of step time over prefix length; the JSON says so.

Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from avlformer.data.token_ids import SEP_ID  # noqa: E402
from avlformer.modeling.attention_mask import learned_av_mask  # noqa: E402
from avlformer.modeling.generation import ReforwardStepper, generate  # noqa: E402
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig  # noqa: E402

TARGET_SPEEDUP = 20.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=115, help="tokens per caption, [CLS] included")
    parser.add_argument("--num-av-tokens", type=int, default=1257)
    parser.add_argument("--reforward-steps", type=int, default=0,
                        help="run the re-forward baseline on this many evenly spread steps and extrapolate "
                             "(0 = every step, the honest default)")
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu (+cuda if present)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return parser.parse_args(argv)


def build(device: torch.device, num_av: int, seed: int = 0):
    torch.manual_seed(seed)
    model = TextTransformer(TextTransformerConfig.base()).eval().to(device)
    with torch.no_grad():
        model.cls.predictions.bias[SEP_ID] = -1e4  # never stop: time full-length captions
    av_tokens = torch.randn(1, num_av, 512, device=device)
    av_mask = learned_av_mask(torch.randn(num_av * num_av, 1, device=device), num_av)
    return model, av_tokens, av_mask


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def sampled_reforward(model, av_tokens, av_mask, tokens, steps: int, device):
    """Time ``steps`` re-forward steps spread over the caption; check each predicts the cached token."""
    caption = [101] + tokens.tolist()
    num_steps = len(tokens) - 1  # decoding ran prefixes 1..max_length-1
    # The last step's token is overwritten by the forced [SEP], so it is timed but not checked.
    prefix_lengths = sorted({round(1 + i * (num_steps - 1) / max(steps - 1, 1)) for i in range(steps)})
    stepper = ReforwardStepper(model, av_tokens, av_mask)
    measured = []
    for c in prefix_lengths:
        prefix = torch.tensor([caption[:c]], device=device)
        with torch.no_grad():
            logits, seconds = timed(lambda: stepper.next_logits(prefix), device)
        predicted = int(logits.argmax(-1))
        if c < num_steps and predicted != caption[c]:
            raise AssertionError(f"re-forward step at prefix {c} predicts {predicted}, cached path chose {caption[c]}")
        measured.append((c, seconds))
    total = 0.0
    for c in range(1, num_steps + 1):  # piecewise-linear interpolation of step time over prefix length
        total += _interpolate(measured, c)
    return total, measured


def _interpolate(points, x):
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def run_device(device: torch.device, args) -> dict:
    model, av_tokens, av_mask = build(device, args.num_av_tokens)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def decode(use_cache, max_length=args.max_length):
        with autocast:
            return generate(model, av_tokens, av_mask, max_length=max_length, use_cache=use_cache)

    decode(True, max_length=4)  # warm-up (allocator, kernels)
    cached, cached_s = timed(lambda: decode(True), device)
    result = {"device": device.type, "dtype": str(dtype).removeprefix("torch."),
              "cached_s": round(cached_s, 4), "cached_ms_per_token": round(1000 * cached_s / (args.max_length - 1), 3)}
    if args.reforward_steps <= 0:
        reference, reforward_s = timed(lambda: decode(False), device)
        identical = torch.equal(reference.token_ids, cached.token_ids)
        if not identical:
            raise AssertionError(f"{device}: cached and re-forward tokens differ")
        result.update(reforward_s=round(reforward_s, 4), reforward_extrapolated=False, tokens_identical=True)
    else:
        with autocast:
            reforward_s, measured = sampled_reforward(model, av_tokens, av_mask, cached.token_ids[0],
                                                      args.reforward_steps, device)
        result.update(reforward_s=round(reforward_s, 4), reforward_extrapolated=True,
                      reforward_measured_steps=[{"prefix": c, "seconds": round(s, 4)} for c, s in measured],
                      tokens_identical=True, tokens_checked="at the measured steps only")
    result["speedup"] = round(result["reforward_s"] / cached_s, 2)
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else args.devices.split(",")
    results = []
    for name in names:
        result = run_device(torch.device(name), args)
        print(json.dumps(result), flush=True)
        results.append(result)
    summary = {
        "benchmark": "decode", "setting": {"layers": 12, "hidden": 768, "vocab": 30522,
                                           "num_av_tokens": args.num_av_tokens, "max_length": args.max_length,
                                           "batch": 1, "greedy": True},
        "host": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "results": results, "key_metric": "speedup per caption (re-forward time / cached time), CPU fp32",
        "speedup": results[0]["speedup"], "target": TARGET_SPEEDUP, "meets_target": results[0]["speedup"] >= TARGET_SPEEDUP,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
