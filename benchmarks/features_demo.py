"""The demo recipe trained end to end vs from cached encoder features, side by side: accuracy and time.

Both runs start from the same weights: the demo model as training initialises it (the config's seed), saved once
as a checkpoint. End to end trains it as `avlformer demo` does (configs/demo_tiny.json, encoders fine-tuned with
their input augmentations). The cached-features run freezes the encoders of that same initial checkpoint
(randomly initialised: the demo has no pretrained encoders), extracts their outputs for the training split with
`avlformer extract-features --model`, and trains the layers above with `avlformer train --features
--pretrained-checkpoint`. Each checkpoint then captions the raw test videos (with their audio, and again with
the audio silenced) and is scored like the demo (docs/training.md, Fast experiments on cached features).

Reported per mode: the demo-proof accuracies, CIDEr, and wall and CPU seconds of each stage (CPU = user + system
of this process and its finished children; steadier than wall time on a shared machine). ``speedup`` = end-to-end
training seconds / (extraction + feature training) seconds, wall and CPU. Prints one JSON object as the last line.

    python benchmarks/features_demo.py [--data DIR] [--workdir DIR] [--epochs N] [--threads 1]

``--data`` reuses a prepared demo dataset (the ``raw/`` folder of an `avlformer demo` work folder); without it
the demo dataset is generated and prepared first (not timed in the comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from avlformer.atomic import write_text_atomic  # noqa: E402
from avlformer.demo import cli as demo  # noqa: E402
from avlformer.training.args import load_config_file, parse_train_args  # noqa: E402

PROOF = 0.90  # the demo proof's accuracy bar for visual and sound attributes


class Stopwatch:
    """Wall and CPU seconds of named stages (CPU of this process plus its reaped children, e.g. loader workers)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        wall, cpu = time.perf_counter(), self._cpu()
        result = fn(*args, **kwargs)
        self.wall[name] = round(time.perf_counter() - wall, 1)
        self.cpu[name] = round(self._cpu() - cpu, 1)
        print(f"== {name}: {self.wall[name]} s wall, {self.cpu[name]} s CPU", flush=True)
        return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a prepared demo dataset (demo work folder's raw/)")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs for both modes (default: config's)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo's default is 1)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed when the dataset is generated")
    return parser.parse_args(argv)


def prepared_dataset(args, work: Path, stored_frames: int, stored_size: int) -> Path:
    if args.data is not None:
        if not (args.data / "metadata" / f"train_{stored_frames}frames.yaml").is_file():
            raise SystemExit(f"features_demo.py: error: {args.data}: no metadata/train_{stored_frames}frames.yaml "
                             "(not a prepared demo dataset)")
        return args.data
    raw = work / "raw"
    demo.stage_synth(raw, {"train": 400, "val": 10, "test": 60}, args.seed)
    demo.stage_prepare(raw, stored_frames, stored_size, len(os.sched_getaffinity(0)))
    return raw


def initial_checkpoint(train_argv: list[str], folder: Path) -> Path:
    """The weights `avlformer train` starts from with these flags (the seed decides them), as a checkpoint."""
    from avlformer.modeling.checkpoint import save_checkpoint
    from avlformer.training.setup import build_model
    from avlformer.training.setup import seed_everything, training_recipe

    config = parse_train_args(train_argv)
    seed_everything(config.run.seed)
    model = build_model(config, torch.device("cpu"))
    save_checkpoint(folder, model, config.model, training_recipe(config))
    return folder


def extract(data: Path, checkpoint: Path, out: Path) -> None:
    from avlformer.training import extract_features

    parser = argparse.ArgumentParser()
    extract_features.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(data), "--model", str(checkpoint), "--out", str(out),
                              "--device", "cpu", "--num-workers", "1"])
    if extract_features.main(args) != 0:
        raise SystemExit("features_demo.py: error: extract-features failed (see above)")


def score(checkpoint: Path, data: Path, out: Path, truth: dict, references: dict) -> dict:
    results = demo.stage_caption(checkpoint, data, "cpu", 20, out)
    return demo.stage_evaluate(results, truth, references)["headline"]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="features_demo_"))
    work.mkdir(parents=True, exist_ok=True)
    train_config = work / "train_config.json"
    flags = load_config_file(demo.default_config_path())
    write_text_atomic(train_config, json.dumps(flags, indent=1))
    probe = demo.resolve_model_config(train_config, work / "raw", work / "probe")
    frames, size = int(probe.num_frames), int(probe.image_size)
    data = prepared_dataset(args, work, frames, size)
    attributes = json.loads((data / "attributes.json").read_text())
    references = json.loads((data / "captions.json").read_text())
    truth = {cid: a for cid, a in attributes.items() if a["split"] == "test"}
    num_train = sum(a["split"] == "train" for a in attributes.values())

    def argv_for(output: Path) -> list[str]:
        return demo.train_argv(data, output, frames, args.epochs, "cpu", train_config, flags, num_train)

    init = initial_checkpoint(argv_for(work / "init_run"), work / "init")
    clock = Stopwatch()
    e2e, _ = clock.run("train end to end", demo.stage_train, argv_for(work / "e2e"))
    clock.run("extract features", extract, data, init, work / "features")
    cached, _ = clock.run("train on features", demo.stage_train,
                          argv_for(work / "cached") + ["--features", str(work / "features"),
                                                       "--pretrained_checkpoint", str(init)])
    results = {}
    for mode, run in (("end_to_end", e2e), ("cached_features", cached)):
        headline = score(Path(run.last_checkpoint), data, work / f"predictions_{mode}", truth, references)
        headline["proof_passed"] = headline["visual_accuracy"] >= PROOF and headline["sound_accuracy"] >= PROOF
        results[mode] = {**{k: round(v, 4) for k, v in headline.items() if isinstance(v, float)},
                         "proof_passed": headline["proof_passed"], "train_steps": run.global_step}
    cached_wall = clock.wall["extract features"] + clock.wall["train on features"]
    cached_cpu = clock.cpu["extract features"] + clock.cpu["train on features"]
    summary = {"benchmark": "features_demo", "results": results, "wall_seconds": clock.wall,
               "cpu_seconds": clock.cpu, "threads": torch.get_num_threads(),
               "speedup": round(clock.wall["train end to end"] / cached_wall, 2),
               "speedup_cpu_time": round(clock.cpu["train end to end"] / cached_cpu, 2),
               "loadavg_1min_end": round(os.getloadavg()[0], 2), "workdir": str(work)}
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
