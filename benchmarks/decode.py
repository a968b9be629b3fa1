"""Caption decoding speed: KV-cached greedy vs upstream's full re-forward, paper-size text transformer.

Setting (default = the paper): 12 layers, hidden 768, vocab 30522, 1257 AV tokens of 512, learned AV mask,
greedy, batch 1; CPU fp32 (and CUDA bf16 when a GPU is present). Random weights, with [SEP] suppressed so every
caption runs the full length (a random model would otherwise stop at an arbitrary step). The AV encoders are
not timed: both paths receive the same AV tokens. Model loading is not part of this benchmark either.

For each thread count (``--threads 1,2``, alternated within each round, ``--repeats`` rounds, medians
reported) it times cached captions of every ``--lengths`` value, the cached path's AV prefill alone, and the
re-forward path. ``--reforward-steps N`` runs the re-forward path for N steps spread evenly over the longest
caption instead of every step (each at its true prefix length, taken from the cached caption, with the predicted
token checked against it) and extrapolates each length's total by linear interpolation of step time over prefix
length; the JSON says so. ``--batch B`` also times the cached path on B different videos at once.

The cached step streams every weight and the AV keys/values from memory once, so the JSON also gives the bytes
one step reads and two memory bandwidths of this machine per thread count: summing one large array
(``bandwidth_floor_ms``, the hardware's best) and streaming weights through two-token products as the step does
(``product_floor_ms``, the floor a step can reach); their quotients with the bytes are the step's floors, next to
its FLOP time at the rate a large product runs here.

The original FAVDBench code is not run here; the summary quotes its one side-by-side run next to ours for a
whole paper caption, encoders included (``original_side_by_side``: machine, day and both times, from
benchmarks/results/side_by_side.jsonl), and divides no time of this run by it.

``--devices cuda`` runs the same on a GPU under bf16 autocast (batch 1 and ``--batch``), for benchmarks/gpu.sh.

Prints one JSON object per device, then a summary JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from avlformer.data.token_ids import CLS_ID, SEP_ID  # noqa: E402
from avlformer.modeling.attention_mask import learned_av_mask  # noqa: E402
from avlformer.modeling.generation import CachedStepper, ReforwardStepper, generate  # noqa: E402
from avlformer.modeling.text_transformer import TextTransformer, TextTransformerConfig  # noqa: E402

# The targets set for this benchmark, caption of the paper length (115 tokens), cached vs re-forward, per thread count.
TARGET_SPEEDUP = {1: 80.0, 2: 40.0}
PAPER_LENGTH = 115
from report import side_by_side  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="40,115,230", help="caption lengths to time, [CLS] included")
    parser.add_argument("--num-av-tokens", type=int, default=1257)
    parser.add_argument("--reforward-steps", type=int, default=0,
                        help="run the re-forward baseline on this many evenly spread steps and extrapolate "
                             "(0 = every step, the honest default)")
    parser.add_argument("--threads", default="1,2", help="comma list of torch CPU thread counts to compare")
    parser.add_argument("--batch", type=int, default=8, help="also time the cached path on this many videos at "
                        "once (at the paper length and the last thread count; 0 = skip)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; medians are reported")
    parser.add_argument("--devices", default="auto", help="comma list of cpu,cuda; auto = cpu (+cuda if present)")
    args = parser.parse_args(argv)
    args.lengths = sorted(int(x) for x in args.lengths.split(","))
    args.threads = [int(x) for x in args.threads.split(",")]
    if min(args.lengths) < 3 or min(args.threads) < 1 or args.repeats < 1 or args.batch < 0:
        parser.error("lengths must be >= 3, threads and repeats >= 1, batch >= 0")
    return args


def build(device: torch.device, num_av: int, batch: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    model = TextTransformer(TextTransformerConfig.base()).eval().to(device)
    with torch.no_grad():
        model.cls.predictions.bias[SEP_ID] = -1e4  # never stop: time full-length captions
    av_tokens = torch.randn(batch, num_av, 512, device=device)
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
    """Time ``steps`` re-forward steps spread over the caption; check each predicts the cached token.
    Returns [(prefix length, seconds)]."""
    caption = [CLS_ID] + tokens.tolist()
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
        check_tokens(c >= num_steps or predicted == caption[c],
                     f"re-forward step at prefix {c} predicts {predicted}, cached path chose {caption[c]}", device)
        measured.append((c, seconds))
    return measured


def extrapolated_total(measured, max_length: int) -> float:
    """Sum of step times over prefixes 1..max_length-1, piecewise-linear in prefix length through ``measured``."""
    return sum(_interpolate(measured, c) for c in range(1, max_length))


def _interpolate(points, x):
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = points[-2], points[-1]  # beyond the last point: extend the last segment
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


# In bf16 on CUDA the cached, re-forward and batched paths take different kernels, so a near-tied logit of the
# random model may pick another token: there a disagreement is recorded in the JSON instead of stopping the run (the
# GPU time is short). In fp32 on the CPU every path must give the same tokens.
BF16_TOKEN_DISAGREEMENTS: list[str] = []


def check_tokens(same: bool, message: str, device: torch.device) -> None:
    if same:
        return
    if device.type == "cpu":
        raise AssertionError(message)
    BF16_TOKEN_DISAGREEMENTS.append(message)


def check_prefixes(captions: dict[int, torch.Tensor], device: torch.device) -> None:
    """Greedy captions of different lengths must agree on their common words (the final forced [SEP] aside)."""
    longest = captions[max(captions)]
    for length, ids in captions.items():
        words = length - 2
        check_tokens(torch.equal(ids[..., :words], longest[..., :words]),
                     f"cached caption of length {length} is not a prefix of the longest one", device)


def step_bytes(model: TextTransformer, num_av: int) -> int:
    """Bytes one batch-1 cached step must read: every encoder and LM-head weight, and every layer's AV keys and
    values (the text part, embeddings rows and activations are comparatively tiny)."""
    element = next(model.parameters()).element_size()
    weights = sum(p.numel() for name, p in model.named_parameters()
                  if name.startswith(("bert.encoder.", "cls.")))
    cfg = model.config
    return element * (weights + 2 * cfg.num_layers * num_av * cfg.hidden_size)


def step_flops(model: TextTransformer, num_av: int, text_length: int) -> float:
    """FLOPs of one batch-1 cached step at ``text_length``: two tokens through every encoder weight, the head at
    one position, and attention of two queries over ``num_av + text_length`` keys in every layer."""
    cfg = model.config
    encoder = sum(p.numel() for name, p in model.named_parameters() if name.startswith("bert.encoder."))
    head = sum(p.numel() for name, p in model.named_parameters() if name.startswith("cls."))
    attention = cfg.num_layers * 2 * 2 * (num_av + text_length) * cfg.hidden_size
    return 2 * 2 * encoder + 2 * head + 2 * attention


def stream_bandwidth() -> float:
    """GB/s summing 400 MB (larger than any cache) at the current thread count, the best of three."""
    data = torch.ones(100_000_000)
    best = min(timed(data.sum, torch.device("cpu"))[1] for _ in range(3))
    return data.numel() * data.element_size() / best / 1e9


def product_bandwidth() -> float:
    """GB/s at which this machine streams weights through the step's own kind of work: two-token products over 24
    distinct 3072 x 768 matrices (226 MB, larger than any cache) at the current thread count, best of three.
    Reading weights this way is slower than summing one large array (``stream_bandwidth``): this is the floor
    a step can reach."""
    weights = [torch.randn(3072, 768) for _ in range(24)]
    bias, hidden = torch.zeros(3072), torch.randn(1, 2, 768)

    def stream():
        with torch.no_grad():
            for weight in weights:
                F.linear(hidden, weight, bias)

    stream()
    best = min(timed(stream, torch.device("cpu"))[1] for _ in range(3))
    return sum(weight.numel() * weight.element_size() for weight in weights) / best / 1e9


def matmul_gflops() -> float:
    """GFLOP/s of a prefill-sized product (1257 x 768 @ 768 x 3072) at the current thread count, best of three."""
    a, b = torch.randn(1257, 768), torch.randn(768, 3072)
    a @ b
    best = min(timed(lambda: a @ b, torch.device("cpu"))[1] for _ in range(3))
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e9


def machine_floors(model: TextTransformer, num_av: int, thread_counts: list[int]) -> dict:
    """Bytes and FLOPs of a paper-length cached step and this machine's bandwidth and product rate."""
    out = {"step_bytes_mb": round(step_bytes(model, num_av) / 1e6, 1),
           "step_gflop": round(step_flops(model, num_av, PAPER_LENGTH) / 1e9, 3), "by_threads": {}}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        bandwidth, products, rate = stream_bandwidth(), product_bandwidth(), matmul_gflops()
        out["by_threads"][str(threads)] = {
            "stream_gb_s": round(bandwidth, 2), "product_stream_gb_s": round(products, 2),
            "matmul_gflop_s": round(rate, 1),
            "bandwidth_floor_ms": round(out["step_bytes_mb"] / bandwidth, 1),
            "product_floor_ms": round(out["step_bytes_mb"] / products, 1),
            "flop_floor_ms": round(1000 * out["step_gflop"] / rate, 1)}
    return out


def run_round(model, av_tokens, av_mask, args, device, autocast) -> dict:
    """One round at the current thread count: cached captions of every length, prefill, re-forward."""
    def decode(use_cache, max_length, av=av_tokens):
        with autocast:
            return generate(model, av, av_mask, max_length=max_length, use_cache=use_cache)

    decode(True, 4)  # warm-up (allocator, kernels, thread pool)
    with torch.no_grad(), autocast:
        _, prefill_s = timed(lambda: CachedStepper(model, av_tokens, av_mask, max(args.lengths)), device)
    cached_s, captions = {}, {}
    for length in args.lengths:
        out, cached_s[length] = timed(lambda: decode(True, length), device)
        captions[length] = out.token_ids
    check_prefixes(captions, device)
    reforward_s = {}
    if args.reforward_steps <= 0:
        for length in args.lengths:
            reference, reforward_s[length] = timed(lambda: decode(False, length), device)
            check_tokens(torch.equal(reference.token_ids, captions[length]),
                         f"{device}: cached and re-forward tokens differ at length {length}", device)
        measured = []
    else:
        longest = max(args.lengths)
        with autocast:
            measured = sampled_reforward(model, av_tokens, av_mask, captions[longest][0], args.reforward_steps,
                                         device)
        reforward_s = {length: extrapolated_total(measured, length) for length in args.lengths}
    return {"prefill_s": prefill_s, "cached_s": cached_s, "reforward_s": reforward_s, "measured": measured}


def summarize(rounds: list[dict], args) -> dict:
    def median(values):
        return round(statistics.median(values), 4)

    prefill = median([r["prefill_s"] for r in rounds])
    out = {"prefill_s": prefill, "lengths": {}}
    for length in args.lengths:
        cached = median([r["cached_s"][length] for r in rounds])
        reforward = median([r["reforward_s"][length] for r in rounds])
        steps = length - 1
        out["lengths"][str(length)] = {
            "cached_s": cached, "cached_ms_per_token": round(1000 * cached / steps, 2),
            "cached_step_ms": round(1000 * (cached - prefill) / steps, 2),
            "reforward_s": reforward, "reforward_ms_per_token": round(1000 * reforward / steps, 1),
            "speedup": round(reforward / cached, 2),
            "speedup_per_round": [round(r["reforward_s"][length] / r["cached_s"][length], 2) for r in rounds]}
    if args.reforward_steps > 0:
        out["reforward_extrapolated"] = True
        out["reforward_measured_steps"] = [[{"prefix": c, "seconds": round(s, 3)} for c, s in r["measured"]]
                                           for r in rounds]
        out["tokens_checked"] = "re-forward at the measured steps only; cached lengths against each other"
    else:
        out["reforward_extrapolated"] = False
        out["tokens_checked"] = "every caption, cached vs re-forward"
    return out


def run_batch(device, args, autocast, threads: int) -> dict:
    """Cached path, paper length: one video vs ``args.batch`` videos decoded together (seconds per caption)."""
    torch.set_num_threads(threads)
    model, av_tokens, av_mask = build(device, args.num_av_tokens, batch=args.batch)

    def decode(av):
        with autocast:
            return generate(model, av, av_mask, max_length=PAPER_LENGTH, use_cache=True)

    decode(av_tokens[:1])
    rows = []
    for _ in range(args.repeats):
        one, one_s = timed(lambda: decode(av_tokens[:1]), device)
        many, many_s = timed(lambda: decode(av_tokens), device)
        check_tokens(torch.equal(one.token_ids[0], many.token_ids[0]),
                     "batched decoding changed the first video's caption", device)
        rows.append((one_s, many_s))
    one_s = statistics.median(r[0] for r in rows)
    many_s = statistics.median(r[1] for r in rows)
    return {"threads": threads, "max_length": PAPER_LENGTH, "batch": args.batch,
            "batch1_s_per_caption": round(one_s, 3), f"batch{args.batch}_s_per_caption": round(many_s / args.batch, 3),
            "batch_speedup_per_caption": round(one_s * args.batch / many_s, 2)}


def run_device(device: torch.device, args) -> dict:
    model, av_tokens, av_mask = build(device, args.num_av_tokens)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    thread_counts = args.threads if device.type == "cpu" else [torch.get_num_threads()]
    rounds = {threads: [] for threads in thread_counts}
    for _ in range(args.repeats):  # alternate thread counts within each round: both see the same machine load
        for threads in thread_counts:
            torch.set_num_threads(threads)
            rounds[threads].append(run_round(model, av_tokens, av_mask, args, device, autocast))
    result = {"device": device.type, "dtype": str(dtype).removeprefix("torch."), "repeats": args.repeats,
              "by_threads": {str(t): summarize(r, args) for t, r in rounds.items()}}
    if device.type == "cuda":
        result["bf16_token_disagreements"] = list(BF16_TOKEN_DISAGREEMENTS)
    if device.type == "cpu":
        floors = machine_floors(model, args.num_av_tokens, thread_counts)
        # Each thread count against its own floor.
        for threads, summary in result["by_threads"].items():
            step_ms = summary["lengths"].get(str(PAPER_LENGTH), {}).get("cached_step_ms")
            own = floors["by_threads"][threads]
            if step_ms is not None:
                own["paper_step_ms_over_floor"] = round(step_ms / max(own["bandwidth_floor_ms"],
                                                                      own["flop_floor_ms"]), 2)
                own["paper_step_ms_over_product_floor"] = round(step_ms / own["product_floor_ms"], 2)
        result["floors"] = floors
    del model
    if args.batch:
        result["batch"] = run_batch(device, args, autocast, thread_counts[-1])
    return result


def _compact(result: dict) -> dict:
    by_threads = {t: {k: v for k, v in s.items() if k != "reforward_measured_steps"}
                  for t, s in result["by_threads"].items()}
    return {**result, "by_threads": by_threads}


def main(argv=None) -> int:
    args = parse_args(argv)
    names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" \
        else args.devices.split(",")
    load_before = os.getloadavg()
    results = []
    for name in names:
        result = run_device(torch.device(name), args)
        print(json.dumps(result), flush=True)
        results.append(result)
    cpu = next((r for r in results if r["device"] == "cpu"), None)
    summary = {
        "benchmark": "decode",
        "setting": {"layers": 12, "hidden": 768, "vocab": 30522, "num_av_tokens": args.num_av_tokens,
                    "lengths": args.lengths, "greedy": True},
        "host": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "key_metric": f"speedup per {PAPER_LENGTH}-token caption (our re-forward time / cached time), CPU fp32",
        "original_side_by_side": side_by_side("caption_e2e"),
        # Per-device details without the per-step re-forward samples (those are on the device lines above).
        "results": [_compact(r) for r in results],
    }
    if cpu is not None and str(PAPER_LENGTH) in next(iter(cpu["by_threads"].values()))["lengths"]:
        paper = {t: s["lengths"][str(PAPER_LENGTH)] for t, s in cpu["by_threads"].items()}
        summary["speedup"] = {t: p["speedup"] for t, p in paper.items()}
        summary["cached_ms_per_token"] = {t: p["cached_ms_per_token"] for t, p in paper.items()}
        summary["reforward_ms_per_token"] = {t: p["reforward_ms_per_token"] for t, p in paper.items()}
        summary["target"] = {str(t): v for t, v in TARGET_SPEEDUP.items() if str(t) in paper}
        summary["meets_target"] = all(paper[t]["speedup"] >= v for t, v in summary["target"].items())
        summary["scaling"] = {t: {length: {"cached_s": row["cached_s"], "cached_step_ms": row["cached_step_ms"],
                                           "reforward_s": row["reforward_s"]}
                                  for length, row in by["lengths"].items()} for t, by in cpu["by_threads"].items()}
        if "floors" in cpu:
            summary["floors"] = cpu["floors"]
        if "batch" in cpu:
            summary["batch"] = cpu["batch"]
        if "1" in paper and "2" in paper:
            summary["cached_2_threads_vs_1"] = round(paper["1"]["cached_s"] / paper["2"]["cached_s"], 2)
    gpu = next((r for r in results if r["device"] == "cuda"), None)
    if gpu is not None:
        lengths = next(iter(gpu["by_threads"].values()))["lengths"]
        summary["cuda"] = {"dtype": gpu["dtype"], "lengths": {k: {"cached_s": v["cached_s"], "speedup": v["speedup"]}
                                                             for k, v in lengths.items()},
                           "batch": gpu.get("batch")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
