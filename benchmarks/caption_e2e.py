"""One paper-size caption end to end on the CPU: load the checkpoint, frames + audio -> Swin + PaSST -> 115 tokens.

Random weights (a freshly built paper AVLFormer, saved as a checkpoint folder and loaded back the way
``avlformer caption`` loads one), [SEP] suppressed so the caption runs the full length. Reports the load time
next to the time to read the weights file, then per round the split between Video Swin (+ fc), PaSST (+ its
norm) and decoding (KV-cached greedy), medians over ``--repeats`` rounds. Inputs are tensors: video/audio
decoding and resizing are the inference pipeline's and are not timed here.

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from avlformer.data.recipe import PreprocessRecipe  # noqa: E402
from avlformer.data.token_ids import SEP_ID  # noqa: E402
from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig  # noqa: E402
from avlformer.modeling.checkpoint import WEIGHTS_NAME, load_model, save_checkpoint  # noqa: E402
from avlformer.modeling.generation import generate  # noqa: E402
from avlformer.modeling.passt import rms_norm  # noqa: E402

ORIGINAL_S = 529.0   # the original code's 115-token caption incl. Swin + PaSST, 2 threads (issue 13, fastest run)
TARGET_SPEEDUP = 40.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=115)
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def caption_round(model: AVLFormer, frames, audio, max_length: int) -> dict:
    with torch.no_grad():
        video, swin_s = timed(lambda: model.fc(model.swin(frames)))
        sound, passt_s = timed(lambda: rms_norm(model.passt(audio)))
        av_tokens = torch.cat([video, sound], dim=1)
        _, decode_s = timed(lambda: generate(model.trans_encoder, av_tokens, model.av_attention_mask(),
                                             max_length=max_length))
    return {"swin_s": swin_s, "passt_s": passt_s, "decode_s": decode_s, "total_s": swin_s + passt_s + decode_s}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = AVLFormerConfig.paper()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        built = AVLFormer(config).eval()
        with torch.no_grad():
            built.trans_encoder.cls.predictions.bias[SEP_ID] = -1e4  # never stop: time full-length captions
        save_checkpoint(folder, built, config, PreprocessRecipe.paper())
        del built
        weights = Path(folder) / WEIGHTS_NAME
        _, read_s = timed(weights.read_bytes)  # page cache warm, as it is for the load right after
        (model, _), load_s = timed(lambda: load_model(folder))
        file_mb = weights.stat().st_size / 1e6
    model.eval()
    frames = torch.randn(1, config.num_frames, 3, config.image_size, config.image_size)
    audio = torch.randn(1, 1, config.audio.clip_samples) * 0.1
    rounds = [caption_round(model, frames, audio, args.max_length) for _ in range(args.repeats)]
    median = {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
    summary = {
        "benchmark": "caption_e2e", "threads": args.threads, "max_length": args.max_length,
        "num_av_tokens": config.num_av_tokens, "cpus": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
        "load_s": round(load_s, 2), "read_weights_file_s": round(read_s, 2), "weights_file_mb": round(file_mb),
        **median, "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
        "original_s": ORIGINAL_S, "speedup_vs_original": round(ORIGINAL_S / median["total_s"], 1),
        "target": TARGET_SPEEDUP, "meets_target": ORIGINAL_S / median["total_s"] >= TARGET_SPEEDUP,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
