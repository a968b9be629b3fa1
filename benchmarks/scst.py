"""Self-critical training against the same CPU time spent on cross-entropy, on the demo data (README.md, The demo).

1. A cross-entropy start: the demo model trained for ``--xe-epochs`` (a complete warm-up/decay schedule), or an
   existing cross-entropy checkpoint (``--xe-start-checkpoint``), whose test CIDEr is below its ceiling but whose
   captions already follow the template: ``cider_xe_start``.
2. From that checkpoint, ``--cpu-minutes`` of this process's CPU time each (an ``ITIMER_PROF`` timer stops the
   run; the last checkpoint before it counts, ``--save-steps`` apart): more cross-entropy
   (``cider_xe_continued``) and ``avlformer train --scst`` (``cider_scst``), both with a fresh optimizer and a
   constant learning rate. CPU time, not wall time, is the budget so that other jobs on a shared machine do not
   hand one side fewer steps; run at one thread (``--threads 1``, the default) and ``num_workers 0``, so the
   process's CPU time is all the training's. Wall seconds are reported too. A rerun with the same start, budget and
   cross-entropy flags reuses the cross-entropy continuation (an SCST sweep trains only SCST).
3. Each checkpoint captions the test split as ``avlformer infer`` does (greedy), scored with validation's CIDEr,
   the synth attributes parsed back from the captions (per-attribute accuracy: SCST must not trade the sound
   sentence for n-gram overlap), the fraction of captions with a repeated 4-gram and the mean length.

Target: ``cider_scst >= 1.1 * cider_xe_continued`` with no rise in repeated 4-grams. Prints one JSON
object as the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from avlformer.demo import cli as demo  # noqa: E402
from avlformer.evaluation.cider_reward import has_repeated_ngram, reward_words  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("scst_bench"), help="work folder (created)")
    parser.add_argument("--data", type=Path, default=None,
                        help="an already prepared demo data folder (demo_work/raw) to use instead of synth+prepare")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-test", type=int, default=60)
    parser.add_argument("--xe-epochs", type=int, default=10,
                        help="the cross-entropy start's complete schedule (docs/training.md measured from step 250 "
                             "of the demo's 20-epoch schedule instead, given by --xe-start-checkpoint)")
    parser.add_argument("--xe-start-checkpoint", type=Path, default=None,
                        help="start from this cross-entropy checkpoint instead of training --xe-epochs")
    parser.add_argument("--cpu-minutes", type=float, default=3.0, help="CPU-time budget of each continuation")
    parser.add_argument("--save-steps", type=int, default=5, help="checkpoint cadence in the continuations")
    parser.add_argument("--xe-learning-rate", type=float, default=None,
                        help="continued cross-entropy lr (default: the demo config's)")
    parser.add_argument("--scst-learning-rate", type=float, default=3e-4, help="the best of a sweep, 1e-4 .. 1e-3")
    parser.add_argument("--sc-train-sample-n", type=int, default=4)
    parser.add_argument("--scst-batch-size", type=int, default=8,
                        help="videos per SCST step (each carries K samples through the LM head)")
    parser.add_argument("--sc-baseline-type", default="sample", choices=("sample", "greedy"))
    parser.add_argument("--temperature", type=float, default=1.0, help="SCST sampling temperature")
    parser.add_argument("--only", choices=("xe_continued", "scst"), default=None,
                        help="train (and record) this continuation only, e.g. to run the two, or an SCST sweep, in "
                             "parallel processes; a later run without --only reuses the recorded ones")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    return parser.parse_args(argv)


def train_for(argv: list[str], cpu_seconds: float | None,
              checkpoint_required: bool = True) -> tuple[Path | None, int, dict]:
    """Train; with ``cpu_seconds``, stop when this process has used that much CPU time on training (as Ctrl-C
    would) and keep the last checkpoint. Checkpoint writes pause the budget's timer: a budgeted run saves every
    few steps so that its stop loses little, and those writes would otherwise cost a cheap step (cross-entropy)
    a far larger share of its budget than a dear one (SCST). Returns the checkpoint (None if there is none and
    none is required), its step, and the run's optimizer steps taken, CPU seconds (all, and those of the
    checkpoint writes) and wall seconds."""
    from avlformer.training import checkpointing
    from avlformer.training.args import parse_train_args
    from avlformer.training.loop import TrainingInterrupted, train

    wall, cpu, saving, steps_done = time.perf_counter(), time.process_time(), [0.0], [0]

    def spent() -> dict:
        return {"steps_done": steps_done[0], "cpu_seconds": round(time.process_time() - cpu, 1),
                "checkpoint_cpu_seconds": round(saving[0], 1), "wall_seconds": round(time.perf_counter() - wall, 1)}

    if cpu_seconds is None:
        result = train(parse_train_args(argv))
        steps_done[0] = result.global_step
        return Path(result.last_checkpoint), result.global_step, spent()

    def stop(signum, frame):
        raise KeyboardInterrupt

    save = checkpointing.save_training_checkpoint

    def untimed_save(*args, **kwargs):
        remaining, _ = signal.setitimer(signal.ITIMER_PROF, 0)
        begin = time.process_time()
        try:
            return save(*args, **kwargs)
        finally:
            saving[0] += time.process_time() - begin
            signal.setitimer(signal.ITIMER_PROF, remaining)

    previous = signal.signal(signal.SIGPROF, stop)
    checkpointing.save_training_checkpoint = untimed_save
    signal.setitimer(signal.ITIMER_PROF, cpu_seconds)
    try:
        result = train(parse_train_args(argv))
        checkpoint, steps = Path(result.last_checkpoint), result.global_step
        steps_done[0] = steps
    except TrainingInterrupted as interrupted:
        steps_done[0] = interrupted.global_step
        if interrupted.last_checkpoint is None:
            if checkpoint_required:
                raise RuntimeError(f"no checkpoint within {cpu_seconds:.0f} CPU seconds: lower --save-steps") from None
            checkpoint, steps = None, 0
        else:
            checkpoint = Path(interrupted.last_checkpoint)
            steps = int(checkpoint.name.rsplit("-", 1)[1])
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
        checkpointing.save_training_checkpoint = save
    return checkpoint, steps, spent()


def evaluate(checkpoint: Path, raw: Path, device: str, out: Path, truth: dict, captions: dict) -> dict:
    from avlformer.evaluation.coco_metrics import caption_metrics

    results = demo.stage_caption(checkpoint, raw, device, 20, out)
    predictions = {p.video_id: p.caption for p in results.normal.predictions}
    refs = {cid: [captions[cid]] for cid in predictions}
    cider = caption_metrics(predictions, refs, scorers=("cider",))["CIDEr"] if predictions else float("nan")
    words = [reward_words(c) for c in predictions.values()]
    return {"cider": cider, "attribute_accuracy": demo.attribute_accuracy(predictions, truth),
            "repeated_4gram": float(np.mean([has_repeated_ngram(w) for w in words])),
            "mean_length": float(np.mean([len(w) for w in words])),
            "reference_length": float(np.mean([len(reward_words(refs[cid][0])) for cid in predictions])),
            "example": next(iter(sorted(predictions.items())), ("", ""))[1]}


def scored(checkpoint: Path, raw: Path, device: str, out: Path, truth: dict, captions: dict) -> dict:
    """:func:`evaluate`, once per checkpoint: a sweep's reruns reuse the scores of the phases they share."""
    record = out / "score.json"
    if record.is_file():
        return json.loads(record.read_text())
    score = evaluate(checkpoint, raw, device, out, truth, captions)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(score))
    return score


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    work = args.workdir.resolve()
    raw = work / "raw"
    begin = time.perf_counter()
    if args.data is not None and not raw.exists():
        shutil.copytree(args.data, raw)
    config_file = REPO / "configs" / "demo_tiny.json"
    model_config = demo.resolve_model_config(config_file, raw, work / "xe_start")
    frames, size = int(model_config.num_frames), int(model_config.image_size)
    if args.data is None:
        demo.stage_synth(raw, {"train": args.num_train, "val": 10, "test": args.num_test}, args.seed)
        demo.stage_prepare(raw, frames, size, 2)
    attributes = json.loads((raw / "attributes.json").read_text())
    captions = json.loads((raw / "captions.json").read_text())
    truth = {cid: a for cid, a in attributes.items() if a["split"] == "test"}
    base = ["--config", str(config_file), "--data_dir", str(raw), "--train_yaml", f"metadata/train_{frames}frames.yaml",
            "--device", args.device, "--num_workers", "0", "--logging_steps", "5"]

    phases = {}
    if args.xe_start_checkpoint is not None:
        start_ckpt = args.xe_start_checkpoint.resolve()
        phases["xe_start"] = {"steps": int(start_ckpt.name.rsplit("-", 1)[1]), "given": str(start_ckpt)}
    elif finished := sorted((work / "xe_start").glob(f"checkpoint-{args.xe_epochs}-*")):
        start_ckpt = finished[-1]  # a rerun with the same start budget reuses the start
        phases["xe_start"] = {"steps": int(start_ckpt.name.rsplit("-", 1)[1]), "reused": str(start_ckpt)}
    else:
        shutil.rmtree(work / "predictions" / "xe_start", ignore_errors=True)  # scores of an earlier start
        start_ckpt, steps, spent = train_for(base + ["--output_dir", str(work / "xe_start"), "--overwrite_output_dir",
                                                     "--num_train_epochs", str(args.xe_epochs)], None)
        phases["xe_start"] = {"steps": steps, **spent, "checkpoint": str(start_ckpt)}
    continued = base + ["--pretrained_checkpoint", str(start_ckpt), "--num_train_epochs", "100000",
                        "--warmup_ratio", "0", "--save_steps", str(args.save_steps)]
    xe_lr = [] if args.xe_learning_rate is None else ["--learning_rate", str(args.xe_learning_rate)]
    scst_name = (f"scst_lr{args.scst_learning_rate:g}_k{args.sc_train_sample_n}_t{args.temperature:g}_"
                 f"{args.sc_baseline_type}_b{args.scst_batch_size}")
    runs = {"xe_continued": continued + ["--output_dir", str(work / "xe_continued"), *xe_lr],
            "scst": continued + ["--output_dir", str(work / scst_name), "--scst",
                                 "--learning_rate", str(args.scst_learning_rate),
                                 "--per_gpu_train_batch_size", str(args.scst_batch_size),
                                 "--sc_train_sample_n", str(args.sc_train_sample_n),
                                 "--sc_baseline_type", args.sc_baseline_type,
                                 "--temperature", str(args.temperature)]}
    checkpoints = {"xe_start": start_ckpt}
    budget = args.cpu_minutes * 60
    for name, run_argv in runs.items():
        if args.only not in (None, name):
            continue
        record = Path(run_argv[run_argv.index("--output_dir") + 1]) / "bench_run.json"
        if record.is_file():  # the same continuation (flags and budget) already ran: reuse it
            previous = json.loads(record.read_text())
            if previous["argv"] == run_argv and previous["cpu_budget"] == budget:
                checkpoints[name] = Path(previous["phase"]["checkpoint"])
                phases[name] = {**previous["phase"], "reused": True}
                continue
        for stale in (record.parent, work / "predictions" / record.parent.name):  # and its scores
            shutil.rmtree(stale, ignore_errors=True)
        checkpoint, steps, spent = train_for(run_argv, budget)
        checkpoints[name] = checkpoint
        phases[name] = {"steps": steps, **spent, "checkpoint": str(checkpoint)}
        record.write_text(json.dumps({"argv": run_argv, "cpu_budget": budget, "phase": phases[name]}))
    if args.only is not None:
        print(json.dumps({args.only: phases[args.only]}))
        return phases
    scores = {name: scored(ckpt, raw, args.device, work / "predictions" / ckpt.parent.name / ckpt.name, truth,
                           captions) for name, ckpt in checkpoints.items()}
    result = {"cider_xe_start": scores["xe_start"]["cider"], "cider_xe_continued": scores["xe_continued"]["cider"],
              "cider_scst": scores["scst"]["cider"],
              "relative_gain": scores["scst"]["cider"] / max(scores["xe_continued"]["cider"], 1e-9) - 1,
              "target_met": bool(scores["scst"]["cider"] >= 1.1 * scores["xe_continued"]["cider"]
                                 and scores["scst"]["repeated_4gram"] <= scores["xe_continued"]["repeated_4gram"]),
              "wall_seconds": round(time.perf_counter() - begin, 1), "cpu_minutes_per_continuation": args.cpu_minutes,
              "phases": phases}
    for name, score in scores.items():
        for key in ("repeated_4gram", "mean_length", "reference_length", "attribute_accuracy", "example"):
            result[f"{key}_{name}"] = score[key]
    result.update(threads=args.threads, device=args.device, xe_epochs=args.xe_epochs,
                  scst_learning_rate=args.scst_learning_rate, sc_train_sample_n=args.sc_train_sample_n,
                  scst_batch_size=args.scst_batch_size, temperature=args.temperature,
                  sc_baseline_type=args.sc_baseline_type, num_test_clips=len(truth))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
