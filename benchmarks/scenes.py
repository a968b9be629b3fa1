"""The scenes benchmark (docs/scenes.md): recipes, ablations and self-critical training told apart on
`avlformer synth --preset scenes` data, each run given the same CPU time.

1. Data: ``synth --preset scenes`` (``--num-train/--num-val/--num-test``), prepared with the ordinary prepare at the
   model's frames and size; a second copy whose mp3s are silence (prepared the same way) for the no-audio run.
2. From scratch, ``--xe-cpu-minutes`` each: ``xe`` (cross-entropy; configs/scenes_tiny.json, the paper
   architecture at a CPU size with the vocabulary synth cut to the training captions), ``no_audio`` (silent
   soundtracks in training and at test time), ``no_mask`` (``--learn_mask_enabled false``) and ``causal_lm`` (the
   causal-LM recipe: configs/scenes_causal_lm.json with tiny random Hugging Face parts).
3. From ``xe``'s checkpoint, ``--continue-cpu-minutes`` each, per seed (``--seeds``): cross-entropy continued and
   ``avlformer train --scst``, both with a fresh optimizer and no warm-up; and ``--control-seeds`` more
   cross-entropy continuations (the control: two identical arms, whose gap is the comparison's noise floor).
   Every schedule (``--max_steps``) is sized from two short calibration runs of its recipe to end its linear
   decay at nine tenths of the budget; the budget stops a run otherwise (its last checkpoint counts).
4. Final checkpoints caption the test split as ``avlformer infer`` does (greedy) and are scored with CIDEr,
   BLEU-4 and METEOR against all five references and with the structured scene score. A continuation's score is
   the mean over ``--end-points`` checkpoints in its last 15 % (the final one included). Intermediate checkpoints
   give the CIDEr-against-CPU-minutes curves.

CPU time: every run trains in a process of its own with one torch thread and ``--num_workers 0`` (so its own CPU
time is all of the run's); an ``ITIMER_PROF`` timer, paused while a checkpoint is written (scst.train_for), stops it
at the budget, and the reported CPU minutes are ``getrusage`` of the process and its children. Runs may go in
parallel (``--jobs``): CPU time, not wall time, is what each gets. Target: ``cider_scst >= 1.05 *
cider_xe_continued`` (test split, mean over seeds) with no structured score falling more than 2 points. Prints one
JSON object as the last line (``benchmarks/report.py record scenes -- python benchmarks/scenes.py`` keeps it in
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
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
         "seeds": 1, "control_seeds": 1, "checkpoints": 2, "curve_points": 2, "end_points": 2}
END_SPAN = 0.15  # the share of a continuation's steps whose checkpoints its score averages
# Checkpoints per continuation: enough for END_SPAN's points, and for a budget that stops a run early to lose little.
CONTINUATION_CHECKPOINTS = 40


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
    parser.add_argument("--control-seeds", type=int, default=3,
                        help="further cross-entropy continuations (seeds after --seeds), compared with the first: "
                             "the noise floor of the comparison (0: none)")
    parser.add_argument("--end-points", type=int, default=4,
                        help=f"checkpoints in the last {END_SPAN:.0%} of a continuation whose scores are averaged "
                             "(1: the final checkpoint alone)")
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

def _die_with_parent() -> None:
    """Pool initializer: on Linux a worker is killed when the benchmark process ends, however it ends. A worker
    left behind by a killed benchmark would go on training for up to its budget, taking CPU from the runs and
    calibrations of the next invocation and so skewing their schedules."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """Fresh (spawned) one-job-per-process workers, ``jobs`` at a time."""
    return ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn"), initializer=_die_with_parent)


def _train_process(argv: list[str], budget: float | None) -> dict:
    """One run in this (fresh) process; returns its checkpoint (None if it wrote none: a calibration run), the
    checkpoint's step, the optimizer steps taken and the CPU seconds (self + children)."""
    import torch

    from scst import train_for

    torch.set_num_threads(1)
    start = cpu_seconds()
    checkpoint, steps, spent = train_for(argv, budget, checkpoint_required=False)
    return {"checkpoint": checkpoint and str(checkpoint), "steps": steps, "steps_done": spent["steps_done"],
            "cpu_seconds": round(cpu_seconds() - start, 1),
            "checkpoint_cpu_seconds": spent["checkpoint_cpu_seconds"], "wall_seconds": spent["wall_seconds"]}


def budgeted(result: dict) -> float:
    """A run's CPU seconds that count against its budget (its checkpoint writes do not)."""
    return result["cpu_seconds"] - result["checkpoint_cpu_seconds"]


def config_texts(argv: list[str]) -> list[str]:
    """The texts of a run's --config file and of the model config it names: part of what a recorded run is."""
    path = Path(argv[argv.index("--config") + 1])
    texts = [path.read_text()]
    model = json.loads(texts[0]).get("model_config")
    return texts + [(path.parent / model).read_text()] if model else texts


def run_all(runs: dict[str, tuple[list[str], float | None]], jobs: int, work: Path,
            calibration: bool = False) -> dict[str, dict]:
    """Train every run (reusing one already recorded with the same flags, config files and budget); a run that
    left no checkpoint is an error unless these are ``calibration`` runs, which write none."""
    results, todo = {}, {}
    for name, (argv, budget) in runs.items():
        record = work / "runs" / name / "bench_run.json"
        key = [argv, budget, config_texts(argv)]
        if record.is_file() and json.loads(record.read_text())["key"] == key:
            results[name] = json.loads(record.read_text())["result"]
        else:
            shutil.rmtree(record.parent, ignore_errors=True)
            todo[name] = key
    with worker_pool(jobs) as pool:
        futures = {name: pool.submit(_train_process, argv, budget) for name, (argv, budget, _) in todo.items()}
        for name, future in futures.items():
            results[name] = future.result()
            print(f"trained {name}: {results[name]}", flush=True)
            if results[name]["checkpoint"] is None and not calibration:
                raise RuntimeError(f"{name}: no checkpoint within its {todo[name][1]:.0f} CPU seconds")
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


def checkpoints_near(output_dir: Path, last_step: int, fractions: list[float]) -> list[tuple[int, Path]]:
    """The run's saved checkpoints (up to ``last_step``) nearest to those fractions of it, as sorted (step, folder)
    pairs; fewer when two fractions share a checkpoint."""
    def step(path: Path) -> int:
        return int(path.name.rsplit("-", 1)[1])

    checkpoints = [p for p in output_dir.glob("checkpoint-*") if step(p) <= last_step]
    chosen = {min(checkpoints, key=lambda p: abs(step(p) - last_step * fraction)) for fraction in fractions}
    return sorted(((step(p), p) for p in chosen), key=lambda item: item[0])


def mean_scores(scores: list[dict]) -> dict:
    """Checkpoints' scores averaged number by number (groups and keys too); other fields from the last one."""
    def merge(values: list):
        if isinstance(values[-1], dict):
            return {key: merge([v[key] for v in values]) for key in values[-1]}
        if isinstance(values[-1], (int, float)) and not isinstance(values[-1], bool):
            return float(np.mean(values))
        return values[-1]

    return merge(scores)


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

    def base(data: Path, out: str, config: Path = CONFIG) -> list[str]:
        return ["--config", str(config), "--data_dir", str(data), "--output_dir", str(work / "runs" / out),
                "--train_yaml", f"metadata/train_{frames}frames.yaml", "--device", "cpu", "--num_workers", "0",
                "--logging_steps", "10"]

    # The paper recipe's BERT decoder reads the vocabulary synth cut down to the training captions' words; the
    # causal-LM recipe's parts are built (random, from configs/scenes_causal_lm_parts.json) with a word-level
    # tokenizer of the same words.
    paper = ["--tokenizer_name", str(raw / "vocab")]
    causal = [item for flag, value in causal_parts(raw, work / "models").items() for item in (f"--{flag}", value)]

    calibration = {}

    def schedule(name: str, flags, budget: float, checkpoints: int) -> list[str]:
        """A ``--max_steps`` schedule filling nine tenths of ``budget`` CPU seconds, from the CPU seconds per step
        of two calibration runs of ``flags`` (20 and 50 CPU seconds; their difference leaves out the start-up),
        with ``checkpoints`` checkpoints spaced over it. The calibration runs write no checkpoint: a step costs
        more between frequent writes, and the real runs write few."""
        short, long = (flags(f"{name}_{seconds}") + ["--max_steps", "1000000", "--save_steps", "1000000"]
                       for seconds in (20, 50))
        calibrated = run_all({f"{name}_20": (short, 20.0), f"{name}_50": (long, 50.0)}, args.jobs, work,
                             calibration=True)
        first, second = calibrated[f"{name}_20"], calibrated[f"{name}_50"]
        per_step = (budgeted(second) - budgeted(first)) / max(1, second["steps_done"] - first["steps_done"])
        calibration[name] = round(per_step, 3)
        # A tenth held back: a step that costs a little more than calibrated must not let the budget stop a run
        # before its learning rate has decayed.
        steps = max(2, int(0.9 * budget / per_step))
        return ["--max_steps", str(steps), "--save_steps", str(max(1, steps // checkpoints))]

    xe_budget = args.xe_cpu_minutes * 60
    paper_schedule = schedule("calibrate", lambda out: base(raw, out) + paper, xe_budget, args.checkpoints)
    causal_schedule = schedule("calibrate_causal_lm", lambda out: base(raw, out, CAUSAL_CONFIG) + causal, xe_budget,
                               args.checkpoints)
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
    # Both objectives from the same start with a fresh optimizer and the same schedule: no warm-up, a linear decay
    # that ends inside the budget, so each run ends settled (at a constant rate a final checkpoint's CIDEr moves
    # by a tenth between nearby steps).
    continued = ["--pretrained_checkpoint", start, "--warmup_ratio", "0"]
    objective = {
        "xe_continued": ["--learning_rate", str(args.xe_learning_rate)],
        "scst": ["--scst", "--learning_rate", str(args.scst_learning_rate), "--per_gpu_train_batch_size",
                 str(args.scst_batch_size), "--sc_train_sample_n", str(args.sc_train_sample_n),
                 "--sc_baseline_type", args.scst_baseline, "--scst_xe_weight", str(args.scst_xe_weight)]}
    continuation_schedules = {
        arm: schedule(f"{prefix}calibrate_{arm}", lambda out, arm=arm: base(raw, out, config) + recipe + continued
                      + objective[arm], continue_budget, CONTINUATION_CHECKPOINTS) for arm in objective}
    # The control: more cross-entropy continuations with seeds of their own, the same recipe as xe_continued;
    # how far two identical arms land apart is the noise any difference between the objectives must clear.
    arms = {seed: ("xe_continued", "scst") for seed in range(args.seeds)}
    arms.update({seed: ("xe_control",) for seed in range(args.seeds, args.seeds + args.control_seeds)})
    pairs = {}
    for seed, names in arms.items():
        for arm in names:
            kind = "scst" if arm == "scst" else "xe_continued"  # the control is cross-entropy continued
            name = f"{prefix}{arm}_s{seed}"
            pairs[name] = (base(raw, name, config) + recipe + continued + objective[kind]
                           + continuation_schedules[kind] + ["--seed", str(seed)], continue_budget)
    trained.update(run_all(pairs, args.jobs, work))

    curve_runs = ("xe", "no_audio", "no_mask", "causal_lm", f"{prefix}xe_continued_s0", f"{prefix}scst_s0")
    chosen = {name: checkpoints_near(work / "runs" / name, trained[name]["steps"],
                                     [k / args.curve_points for k in range(1, args.curve_points + 1)])
              for name in curve_runs}
    # A continuation's score is the mean over its last checkpoints (the final one and those nearest to evenly
    # spaced steps in the last END_SPAN of its run): one greedy caption set is a noisy sample of where it ended.
    end_fractions = [1 - END_SPAN * k / max(1, args.end_points - 1) for k in range(args.end_points)]
    ends = {name: checkpoints_near(work / "runs" / name, trained[name]["steps"], end_fractions) for name in pairs}
    # Every checkpoint scored once (a curve's last point is its run's final checkpoint), in the run pool.
    tasks = {(name, "final"): Path(result["checkpoint"]) for name, result in trained.items()}
    tasks.update({(name, step): checkpoint for name, points in [*chosen.items(), *ends.items()]
                  for step, checkpoint in points})
    with worker_pool(args.jobs) as pool:
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

    def described(name: str, result: dict) -> dict:
        score = scores[(name, "final")]
        if name in ends:
            score = {**mean_scores([scores[(name, step)] for step, _ in ends[name]]), "cider_final": score["cider"],
                     "end_steps": [step for step, _ in ends[name]]}
        return {**score, "cpu_minutes": round(result["cpu_seconds"] / 60, 2),
                "checkpoint_cpu_minutes": round(result["checkpoint_cpu_seconds"] / 60, 2), "steps": result["steps"]}

    final = {name: described(name, result) for name, result in trained.items()}
    curves = {}
    for name in curve_runs:
        run_per_step = budgeted(trained[name]) / max(1, trained[name]["steps"])
        start_point = [] if name in scratch else [[0.0, round(final[args.continue_from]["cider"], 4)]]
        curves[name] = start_point + [[round(step * run_per_step / 60, 2), round(scores[(name, step)]["cider"], 4)]
                                      for step, _ in chosen[name]]

    def mean(arm: str, key) -> float:
        return float(np.mean([key(final[f"{prefix}{arm}_s{seed}"]) for seed, names in arms.items() if arm in names]))

    keys = list(final["xe"]["scene"])

    def structured(arm: str) -> dict[str, float]:
        return {k: mean(arm, lambda r: r["scene"][k]) for k in keys}

    cider_xe, cider_scst = mean("xe_continued", lambda r: r["cider"]), mean("scst", lambda r: r["cider"])
    structured_xe, structured_scst = structured("xe_continued"), structured("scst")
    drops = {k: structured_xe[k] - structured_scst[k] for k in keys}
    largest_drop = max(drops.values())
    control = {}
    if args.control_seeds:
        cider_control = mean("xe_control", lambda r: r["cider"])
        structured_control = structured("xe_control")
        gaps = {k: abs(structured_xe[k] - structured_control[k]) for k in keys}
        control = {"cider_xe_control": cider_control, "relative_difference": cider_control / max(cider_xe, 1e-9) - 1,
                   "largest_structured_difference": max(gaps.values()),
                   "largest_structured_difference_key": max(gaps, key=gaps.get), "structured_difference": gaps}
    result = {
        "continue_from": args.continue_from, "cider_xe_continued": cider_xe, "cider_scst": cider_scst,
        "relative_gain": cider_scst / max(cider_xe, 1e-9) - 1,
        "largest_structured_drop": largest_drop, "largest_structured_drop_key": max(drops, key=drops.get),
        "target_met": bool(cider_scst > 0 and cider_scst >= 1.05 * cider_xe and largest_drop <= 2.0),
        "structured_drop_scst_vs_xe_continued": drops, "control": control,
        "runs": final, "curves": curves,
        "sizes": counts, "xe_cpu_minutes_budget": args.xe_cpu_minutes,
        "continue_cpu_minutes_budget": args.continue_cpu_minutes, "seeds": args.seeds,
        "control_seeds": args.control_seeds, "end_points": args.end_points, "end_span": END_SPAN,
        "xe_schedules": {"paper": paper_schedule, "causal_lm": causal_schedule},
        "continuation_schedules": continuation_schedules,
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
