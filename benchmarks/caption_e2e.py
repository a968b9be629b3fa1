"""One paper-size caption end to end: load the checkpoint, frames + audio -> Swin + PaSST -> 115 tokens.

Random weights (a freshly built paper AVLFormer, saved as a checkpoint folder and loaded back the way
``avlformer caption`` loads one: ``pipeline.load_for_inference``, tokenizer included), [SEP] suppressed so the
caption runs the full length. Reports the load time (``load_model`` alone, and all that ``avlformer caption``
does before the first frame) next to the time to read the weights file (all from the page cache, the file having
just been written), then per round the split between Video Swin (+ fc), PaSST (+ its norm) and decoding
(KV-cached greedy, AV prefill included, steps at one thread on the CPU as inference runs them), medians over
``--repeats`` rounds. Inputs are tensors: video/audio decoding and resizing are the inference pipeline's and are
not timed here.

On CPU the JSON quotes the one side-by-side run of the original FAVDBench code next to ours for this caption
(``original_side_by_side``: machine, day and both times, from benchmarks/results/side_by_side.jsonl); this run's time
is not divided by the original's. ``--devices cuda`` runs the caption on a GPU under bf16 autocast
(benchmarks/gpu.sh).

Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# Before torch starts: the allocator environment `avlformer caption` runs under (transparent huge pages for large
# tensors, set by the avlformer command itself), so the benchmark times what the command does.
import avlformer.cli  # noqa: E402,F401

import torch  # noqa: E402

from avlformer.data.recipe import PreprocessRecipe  # noqa: E402
from avlformer.data.token_ids import SEP_ID  # noqa: E402
from avlformer.inference.cpu_decoding import decoding_steps_at_one_thread  # noqa: E402
from avlformer.inference.pipeline import load_for_inference  # noqa: E402
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig  # noqa: E402
from avlformer.modeling.checkpoint import WEIGHTS_NAME, load_model, save_checkpoint  # noqa: E402
from avlformer.modeling.generation import generate  # noqa: E402
from avlformer.modeling.passt import rms_norm  # noqa: E402

from report import side_by_side  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=115)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--devices", default="cpu", choices=("cpu", "cuda"),
                        help="cpu (fp32) or cuda (bf16 autocast)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.max_length < 2:
        parser.error("threads and repeats must be >= 1, max-length >= 2")
    return args


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def caption_round(model: AVLFormer, frames, audio, max_length: int, device: torch.device) -> dict:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with torch.no_grad(), autocast:
        video, swin_s = timed(lambda: model.projection("video")(model.part("video")(frames)), device)
        sound, passt_s = timed(lambda: rms_norm(model.projection("audio")(model.part("audio")(audio))), device)
        av_tokens = torch.cat([video, sound], dim=1)
        # Decoding as inference runs it (inference/pipeline.caption_batch): on the CPU, steps at one thread.
        steps = (decoding_steps_at_one_thread(model.part("text"), model.part("text").cls) if device.type == "cpu"
                 else nullcontext())
        with steps:
            _, decode_s = timed(lambda: generate(model.part("text"), av_tokens, model.av_attention_mask(),
                                                 max_length=max_length), device)
    return {"swin_s": swin_s, "passt_s": passt_s, "decode_s": decode_s, "total_s": swin_s + passt_s + decode_s}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.devices)
    config = AVLFormerConfig.paper()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        built = AVLFormer(config).eval()
        with torch.no_grad():
            built.part("text").cls.predictions.bias[SEP_ID] = -1e4  # never stop: time full-length captions
        save_checkpoint(folder, built, config, PreprocessRecipe.paper())
        del built
        weights = Path(folder) / WEIGHTS_NAME
        cpu = torch.device("cpu")
        _, read_s = timed(weights.read_bytes, cpu)  # page cache warm, as it is for the load right after
        _, load_model_s = timed(lambda: load_model(folder), cpu)  # the weights alone, into a meta-built model
        loaded, load_s = timed(lambda: load_for_inference(folder, args.devices), device)
        file_mb = weights.stat().st_size / 1e6
    model = loaded.model
    frames = torch.randn(1, config.num_frames, 3, config.image_size, config.image_size, device=device)
    audio = torch.randn(1, 1, config.audio.clip_samples, device=device) * 0.1
    rounds = [caption_round(model, frames, audio, args.max_length, device) for _ in range(args.repeats)]
    median = {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
    summary = {
        "benchmark": "caption_e2e", "device": device.type,
        "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
        "threads": args.threads, "max_length": args.max_length,
        "num_av_tokens": config.num_av_tokens, "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2), "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
        # load_s: what `avlformer caption` waits for before the first frame (weights, recipe, tokenizer, device).
        "load_s": round(load_s, 2), "load_model_s": round(load_model_s, 2), "read_weights_file_s": round(read_s, 2),
        "weights_file_mb": round(file_mb), "load_model_over_read": round(load_model_s / read_s, 2),
        **median, "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
    }
    if device.type == "cpu":
        summary["original_side_by_side"] = side_by_side("caption_e2e")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
