"""The scenes benchmark (docs/scenes.md): recipes, ablations and self-critical training told apart on
`avlformer synth --preset scenes` data, each run given the same CPU time.

1. Data: ``synth --preset scenes`` (``--num-train/--num-val/--num-test``), prepared with the ordinary prepare at the
   model's frames and size; a second copy whose mp3s are silence (prepared the same way) for the no-audio run.
2. From scratch, ``--xe-cpu-minutes`` each: ``xe`` (cross-entropy; configs/scenes_tiny.json, the paper
   architecture at a CPU size with the vocabulary synth cut to the training captions), ``no_audio`` (silent
   soundtracks in training and at test time), ``no_mask`` (``--learn_mask_enabled false``) and ``causal_lm`` (the
   causal-LM recipe: configs/scenes_causal_lm.json with tiny random Hugging Face parts). The schedule is sized
   to the budget from two short calibration runs per recipe, so each
   ends its warm-up/decay near the budget; the budget stops it otherwise (the last checkpoint counts).
3. From ``xe``'s checkpoint, ``--continue-cpu-minutes`` each, per seed (``--seeds``): cross-entropy continued and
   ``avlformer train --scst``, both with a fresh optimizer at the same constant learning rate.
4. Every final checkpoint captions the test split as ``avlformer infer`` does (greedy) and is scored with
   CIDEr, BLEU-4 and METEOR against all five references and with the structured scene score; intermediate
   checkpoints give the CIDEr-against-CPU-minutes curves (their CPU minutes interpolated by step).

CPU time: every run trains in a process of its own with one torch thread and ``--num_workers 0`` (so its own CPU
time is all of the run's); an ``ITIMER_PROF`` timer, paused while a checkpoint is written (scst.train_for), stops
it at the budget, and the reported CPU minutes are
``getrusage`` of the process and its children. Runs may go in parallel (``--jobs``): CPU time, not wall time, is
what each gets. Target: ``cider_scst >= 1.05 * cider_xe_continued`` (test split, mean over seeds) with no
structured score falling more than 2 points. Prints one JSON object as the last line (``benchmarks/report.py
record scenes -- python benchmarks/scenes.py`` keeps it in benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIG = REPO / "configs" / "scenes_tiny.json"
CAUSAL_CONFIG = REPO / "configs" / "scenes_causal_lm.json"
CAUSAL_PARTS = REPO / "configs" / "scenes_causal_lm_parts.json"
QUICK = {"num_train": 60, "num_val": 4, "num_test": 12, "xe_cpu_minutes": 1.0, "continue_cpu_minutes": 0.75,
         "seeds": 1, "checkpoints": 2, "curve_points": 2}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("scenes_bench"), help="work folder (created)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=100)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--xe-cpu-minutes", type=float, default=9.0, help="budget of each from-scratch run")
    parser.add_argument("--continue-cpu-minutes", type=float, default=4.0, help="budget of each continuation")
    parser.add_argument("--seeds", type=int, default=3, help="continuation seeds (training order and sampling)")
    parser.add_argument("--checkpoints", type=int, default=3, help="checkpoints kept per from-scratch run")
    parser.add_argument("--curve-points", type=int, default=3,
                        help="checkpoints per run scored for the curves, the final one included (each costs a "
                             "test-split captioning)")
    parser.add_argument("--xe-learning-rate", type=float, default=None,
                        help="continued cross-entropy lr (default: --scst-learning-rate, so only the objective "
                             "differs)")
    parser.add_argument("--scst-learning-rate", type=float, default=1e-4)
    parser.add_argument("--continue-from", choices=("xe", "causal_lm"), default="xe",
                        help="the from-scratch run both continuations start from")
    parser.add_argument("--scst-baseline", choices=("greedy", "sample"), default="sample",
                        help="SCST reward baseline: the greedy caption's (Rennie et al.) or the other samples' mean")
    parser.add_argument("--scst-xe-weight", type=float, default=1.0,
                        help="weight of the cross-entropy anchor in the self-critical loss (0: self-critical alone)")
    parser.add_argument("--sc-train-sample-n", type=int, default=4)
    parser.add_argument("--scst-batch-size", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="runs trained at once, each in its own one-thread process (default: the CPU count)")
    args = parser.parse_args(argv)
    if args.xe_learning_rate is None:
        args.xe_learning_rate = args.scst_learning_rate
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ----------------------------------------------------------------------------------------------------- data

def make_data(raw: Path, counts: dict, seed: int, frames: int, size: int) -> dict:
    from avlformer.data import synth, synth_scenes
    from avlformer.data.prepare import prepare_dataset

    marker = raw / ".bench.json"
    wanted = {"counts": counts, "seed": seed, "frames": frames, "size": size}
    if marker.is_file() and json.loads(marker.read_text())["wanted"] == wanted:
        return json.loads(marker.read_text())["seconds"]
    shutil.rmtree(raw, ignore_errors=True)
    seconds = {}
    start, cpu = time.perf_counter(), cpu_seconds()
    synth.synthesize(raw, counts, seed=seed, preset=synth_scenes.SCENES, progress=False)
    seconds["synth"] = {"wall": round(time.perf_counter() - start, 1), "cpu": round(cpu_seconds() - cpu, 1)}
    start, cpu = time.perf_counter(), cpu_seconds()
    result = prepare_dataset(raw, num_frames=frames, short_side=size, progress=False)
    if result.errors:
        raise RuntimeError(f"prepare left out {len(result.errors)} clip(s): {result.errors[0]}")
    seconds["prepare"] = {"wall": round(time.perf_counter() - start, 1), "cpu": round(cpu_seconds() - cpu, 1)}
    silent = raw.parent / "raw_silent"
    shutil.rmtree(silent, ignore_errors=True)
    silent.mkdir()
    (silent / "videos").symlink_to(raw / "videos", target_is_directory=True)
    shutil.copy(raw / "captions.json", silent / "captions.json")
    from avlformer.data.recipe import SAMPLE_RATE

    for clip_id, scene in json.loads((raw / "attributes.json").read_text()).items():
        quiet = np.zeros(int(round(scene["duration"] * SAMPLE_RATE)), dtype=np.float32)
        synth.write_mp3(silent / "audio_mp3" / scene["split"] / f"{clip_id}.mp3", quiet)
    if prepare_dataset(silent, num_frames=frames, short_side=size, progress=False).errors:
        raise RuntimeError("prepare of the silenced copy failed")
    marker.write_text(json.dumps({"wanted": wanted, "seconds": seconds}))
    return seconds


def causal_parts(raw: Path, models: Path) -> dict[str, str]:
    """The causal-LM recipe's tiny random parts, its tokenizer knowing the training captions' words (and the
    prompt's); returns their ``--video_encoder/--audio_encoder/--decoder`` values."""
    from avlformer.demo.recipes import build_parts, caption_words
    from avlformer.modeling.hf_causal_lm import HFCausalLMConfig

    scenes = json.loads((raw / "attributes.json").read_text())
    train = [text for clip_id, references in json.loads((raw / "captions.json").read_text()).items()
             if scenes[clip_id]["split"] == "train" for text in references]
    return build_parts(CAUSAL_PARTS, models, caption_words([HFCausalLMConfig.prompt, *train]))


# ----------------------------------------------------------------------------------------------------- training

def _train_process(argv: list[str], budget: float | None) -> dict:
    """One run in this (fresh) process; returns its checkpoint, steps and CPU seconds (self + children)."""
    import torch

    from scst import train_for

    torch.set_num_threads(1)
    start = cpu_seconds()
    checkpoint, steps, spent = train_for(argv, budget)
    return {"checkpoint": str(checkpoint), "steps": steps, "cpu_seconds": round(cpu_seconds() - start, 1),
            "checkpoint_cpu_seconds": spent["checkpoint_cpu_seconds"], "wall_seconds": spent["wall_seconds"]}


def config_texts(argv: list[str]) -> list[str]:
    """The texts of a run's --config file and of the model config it names: part of what a recorded run is."""
    path = Path(argv[argv.index("--config") + 1])
    texts = [path.read_text()]
    model = json.loads(texts[0]).get("model_config")
    return texts + [(path.parent / model).read_text()] if model else texts


def run_all(runs: dict[str, tuple[list[str], float | None]], jobs: int, work: Path) -> dict[str, dict]:
    """Train every run (reusing one already recorded with the same flags, config files and budget)."""
    results, todo = {}, {}
    for name, (argv, budget) in runs.items():
        record = work / "runs" / name / "bench_run.json"
        key = [argv, budget, config_texts(argv)]
        if record.is_file() and json.loads(record.read_text())["key"] == key:
            results[name] = json.loads(record.read_text())["result"]
        else:
            shutil.rmtree(record.parent, ignore_errors=True)
            todo[name] = key
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(_train_process, argv, budget) for name, (argv, budget, _) in todo.items()}
        for name, future in futures.items():
            results[name] = future.result()
            print(f"trained {name}: {results[name]}", flush=True)
            record = work / "runs" / name / "bench_run.json"
            record.write_text(json.dumps({"key": todo[name], "result": results[name]}))
    return results


# ----------------------------------------------------------------------------------------------------- scoring

def score_checkpoint(checkpoint: Path, media: Path, raw: Path, silence: bool, scorers: tuple[str, ...]) -> dict:
    """Caption the test videos of ``media`` (the data or its silenced copy) and score them against ``raw``'s
    references and scenes."""
    from avlformer.evaluation.coco_metrics import caption_metrics
    from avlformer.evaluation.scene_score import score_scenes
    from avlformer.inference import pipeline

    record = checkpoint / f"scenes_score{'_silenced' if silence else ''}_{'_'.join(scorers)}.json"
    if record.is_file():
        return json.loads(record.read_text())
    loaded = pipeline.load_for_inference(checkpoint, "cpu")
    listing = pipeline.list_videos(media / "videos" / "test")
    run = pipeline.caption_videos(loaded, listing.videos, pipeline.checkpoint_decoding(loaded.config),
                                  audio_dir=media / "audio_mp3" / "test", batch_size=25, silence_audio=silence,
                                  progress=False)
    predictions = {p.video_id: p.caption for p in run.predictions}
    captions = json.loads((raw / "captions.json").read_text())
    scenes = {cid: s for cid, s in json.loads((raw / "attributes.json").read_text()).items() if s["split"] == "test"}
    coco = caption_metrics(predictions, {cid: captions[cid] for cid in predictions}, scorers=scorers)
    structured = score_scenes(predictions, scenes)
    score = {"cider": coco.get("CIDEr"), "bleu4": coco.get("Bleu_4"), "meteor": coco.get("METEOR"),
             "scene_groups": structured.groups, "scene": structured.scores,
             "sound_by_relation": structured.sound_by_relation,
             "mean_words": float(np.mean([len(c.split()) for c in predictions.values()])),
             "example": predictions[sorted(predictions)[0]], "num_test": len(predictions),
             "failed": len(scenes) - len(predictions)}
    record.write_text(json.dumps(score))
    return score


def _score_process(checkpoint: Path, media: Path, raw: Path, silence: bool, scorers: tuple[str, ...]) -> dict:
    """score_checkpoint in a (fresh, one-thread) process of the pool."""
    import torch

    torch.set_num_threads(1)
    return score_checkpoint(checkpoint, media, raw, silence, scorers)


def curve_checkpoints(output_dir: Path, result: dict, points_wanted: int) -> list[tuple[int, Path]]:
    """Up to ``points_wanted`` of a run's checkpoints as (step, folder), the curve's points: those nearest to
    evenly spaced steps, the last being the run's final checkpoint (scored anyway)."""
    def step(path: Path) -> int:
        return int(path.name.rsplit("-", 1)[1])

    checkpoints = [p for p in output_dir.glob("checkpoint-*") if step(p) <= result["steps"]]
    targets = [result["steps"] * k / points_wanted for k in range(1, points_wanted + 1)]
    chosen = {min(checkpoints, key=lambda p: abs(step(p) - target)) for target in targets}
    return sorted(((step(p), p) for p in chosen), key=lambda item: item[0])


# ----------------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(argv)
    from avlformer.demo.cli import resolve_model_config

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw, silent = work / "raw", work / "raw_silent"
    begin = time.perf_counter()
    model = resolve_model_config(CONFIG, raw, work / "calibrate")
    frames, size = int(model.num_frames), int(model.image_size)
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    data_seconds = make_data(raw, counts, args.data_seed, frames, size)
    batch = int(json.loads(CONFIG.read_text())["per_gpu_train_batch_size"])
    steps_per_epoch = math.ceil(5 * args.num_train / batch)  # five references per clip

    def base(data: Path, out: str, config: Path = CONFIG) -> list[str]:
        return ["--config", str(config), "--data_dir", str(data), "--output_dir", str(work / "runs" / out),
                "--train_yaml", f"metadata/train_{frames}frames.yaml", "--device", "cpu", "--num_workers", "0",
                "--logging_steps", "10"]

    # The paper recipe's BERT decoder reads the vocabulary synth cut down to the training captions' words; the
    # causal-LM recipe's parts are built (random, from configs/scenes_causal_lm_parts.json) with a word-level
    # tokenizer of the same words.
    paper = ["--tokenizer_name", str(raw / "vocab")]
    causal = [item for flag, value in causal_parts(raw, work / "models").items() for item in (f"--{flag}", value)]

    def schedule(name: str, flags) -> list[str]:
        """Epochs and checkpoint spacing for an ``--xe-cpu-minutes`` run, from the CPU seconds per step of two
        calibration runs (20 and 50 CPU seconds; their difference leaves out the start-up)."""
        short, long = (flags(f"{name}_{seconds}") + ["--num_train_epochs", "1000", "--save_steps", "2"]
                       for seconds in (20, 50))
        calibrated = run_all({f"{name}_20": (short, 20.0), f"{name}_50": (long, 50.0)}, args.jobs, work)
        first, second = calibrated[f"{name}_20"], calibrated[f"{name}_50"]
        per_step = (second["cpu_seconds"] - first["cpu_seconds"]) / max(1, second["steps"] - first["steps"])
        calibration[name] = round(per_step, 3)
        # A tenth held back: a step that costs a little more than calibrated must not cut the schedule short
        # (the budget's stop would fall back to the checkpoint before).
        budget_steps = max(1, int(0.9 * args.xe_cpu_minutes * 60 / per_step))
        epochs = max(1, budget_steps // steps_per_epoch)
        # A budget shorter than an epoch still runs a one-epoch schedule; checkpoints are spaced over the steps
        # the budget allows, so the run always leaves one.
        reachable = min(budget_steps, epochs * steps_per_epoch)
        return ["--num_train_epochs", str(epochs), "--save_steps", str(max(1, reachable // args.checkpoints))]

    calibration = {}
    paper_schedule = schedule("calibrate", lambda out: base(raw, out) + paper)
    causal_schedule = schedule("calibrate_causal_lm", lambda out: base(raw, out, CAUSAL_CONFIG) + causal)
    xe_budget = args.xe_cpu_minutes * 60
    scratch = {"xe": (base(raw, "xe") + paper + paper_schedule, xe_budget),
               "no_audio": (base(silent, "no_audio") + paper + paper_schedule, xe_budget),
               "no_mask": (base(raw, "no_mask") + paper + paper_schedule + ["--learn_mask_enabled", "false"],
                           xe_budget),
               "causal_lm": (base(raw, "causal_lm", CAUSAL_CONFIG) + causal + causal_schedule, xe_budget)}
    trained = run_all(scratch, args.jobs, work)
    # The continuations start from the paper recipe's cross-entropy run, or from the causal-LM recipe's
    # (--continue-from causal_lm; its runs are named with that prefix, so both sets can live in one work folder).
    prefix = "" if args.continue_from == "xe" else f"{args.continue_from}_"
    recipe = paper if args.continue_from == "xe" else causal
    config = CONFIG if args.continue_from == "xe" else CAUSAL_CONFIG
    start = trained[args.continue_from]["checkpoint"]
    continue_budget = args.continue_cpu_minutes * 60
    continued = ["--pretrained_checkpoint", start, "--num_train_epochs", "100000", "--warmup_ratio", "0",
                 "--save_steps", "2"]
    xe_lr = ["--learning_rate", str(args.xe_learning_rate)]
    pairs = {}
    for seed in range(args.seeds):
        name = f"{prefix}xe_continued_s{seed}"
        pairs[name] = (base(raw, name, config) + recipe + continued + xe_lr + ["--seed", str(seed)], continue_budget)
        name = f"{prefix}scst_s{seed}"
        pairs[name] = (base(raw, name, config) + recipe + continued + [
            "--seed", str(seed), "--scst", "--learning_rate", str(args.scst_learning_rate),
            "--per_gpu_train_batch_size", str(args.scst_batch_size), "--sc_train_sample_n",
            str(args.sc_train_sample_n), "--sc_baseline_type", args.scst_baseline,
            "--scst_xe_weight", str(args.scst_xe_weight)], continue_budget)
    trained.update(run_all(pairs, args.jobs, work))

    curve_runs = ("xe", "no_audio", "no_mask", "causal_lm", f"{prefix}xe_continued_s0", f"{prefix}scst_s0")
    chosen = {name: curve_checkpoints(work / "runs" / name, trained[name], args.curve_points) for name in curve_runs}
    # Every checkpoint scored once (a curve's last point is its run's final checkpoint), in the run pool.
    tasks = {(name, "final"): Path(result["checkpoint"]) for name, result in trained.items()}
    tasks.update({(name, step): checkpoint for name in curve_runs for step, checkpoint in chosen[name]})
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        runs_of = {checkpoint: name for (name, _), checkpoint in tasks.items()}
        futures = {checkpoint: pool.submit(_score_process, checkpoint, silent if name == "no_audio" else raw, raw,
                                           name == "no_audio", ("bleu", "meteor", "cider"))
                   for checkpoint, name in runs_of.items()}
        scores = {key: futures[checkpoint].result() for key, checkpoint in tasks.items()}
    # Runs save every few steps so that the budget's stop loses little; only the scored checkpoints are read again
    # (a rerun picks the same ones), so this invocation's other checkpoints go.
    for name in [*trained, *(f"{c}_{s}" for c in calibration for s in (20, 50))]:
        for folder in (work / "runs" / name).glob("checkpoint-*"):
            if folder not in runs_of:
                shutil.rmtree(folder)
    final = {name: {**scores[(name, "final")], "cpu_minutes": round(result["cpu_seconds"] / 60, 2),
                    "steps": result["steps"]} for name, result in trained.items()}
    curves = {}
    for name in curve_runs:
        run_per_step = trained[name]["cpu_seconds"] / max(1, trained[name]["steps"])
        start_point = [] if name in scratch else [[0.0, round(final[args.continue_from]["cider"], 4)]]
        curves[name] = start_point + [[round(step * run_per_step / 60, 2), round(scores[(name, step)]["cider"], 4)]
                                      for step, _ in chosen[name]]

    def mean(prefix: str, key) -> float:
        return float(np.mean([key(final[f"{prefix}_s{s}"]) for s in range(args.seeds)]))

    cider_xe = mean(f"{prefix}xe_continued", lambda r: r["cider"])
    cider_scst = mean(f"{prefix}scst", lambda r: r["cider"])
    keys = list(final["xe"]["scene"])
    drops = {k: mean(f"{prefix}xe_continued", lambda r: r["scene"][k]) - mean(f"{prefix}scst",
                                                                            lambda r: r["scene"][k]) for k in keys}
    largest_drop = max(drops.values())
    result = {
        "continue_from": args.continue_from, "cider_xe_continued": cider_xe, "cider_scst": cider_scst,
        "relative_gain": cider_scst / max(cider_xe, 1e-9) - 1,
        "largest_structured_drop": largest_drop, "largest_structured_drop_key": max(drops, key=drops.get),
        "target_met": bool(cider_scst > 0 and cider_scst >= 1.05 * cider_xe and largest_drop <= 2.0),
        "structured_drop_scst_vs_xe_continued": drops,
        "runs": {name: {k: v for k, v in r.items()} for name, r in final.items() if name != "xe_start"},
        "curves": curves,
        "sizes": counts, "xe_cpu_minutes_budget": args.xe_cpu_minutes,
        "continue_cpu_minutes_budget": args.continue_cpu_minutes, "seeds": args.seeds,
        "xe_schedules": {"paper": paper_schedule, "causal_lm": causal_schedule},
        "calibration_cpu_seconds_per_step": calibration, "data_seconds": data_seconds,
        "scst_learning_rate": args.scst_learning_rate, "sc_train_sample_n": args.sc_train_sample_n,
        "scst_batch_size": args.scst_batch_size, "scst_baseline": args.scst_baseline,
        "scst_xe_weight": args.scst_xe_weight,
        "xe_learning_rate": args.xe_learning_rate,
        "quick": args.quick, "jobs": args.jobs, "wall_seconds": round(time.perf_counter() - begin, 1),
        "cores": len(os.sched_getaffinity(0)), "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
