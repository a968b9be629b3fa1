"""`avlformer demo` (``make demo``): synth -> prepare -> train -> caption the test split (with its audio and
silenced) -> evaluate -> report.html + metrics.json, in the work folder (README.md, The demo); ``--recipe`` picks
what is trained (demo/recipes.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avlformer.atomic import write_text_atomic
from avlformer.data import synth
from avlformer.demo.recipes import RECIPES, build_parts, configs_dir, demo_words
from avlformer.json_files import read_json
from avlformer.output_paths import output_file_problem, output_folder_problem

STAGES = ("synth", "prepare", "train", "caption", "evaluate", "report")


def default_config_path(recipe: str = "paper") -> Path:
    """The recipe's training flag file in configs/ of this checkout, else under the cwd."""
    return configs_dir() / RECIPES[recipe].config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("demo_work"), help="work folder (created)")
    parser.add_argument("--recipe", default="paper", choices=tuple(RECIPES),
                        help="paper: the paper's parts, tiny (configs/demo_tiny.json); causal-lm: tiny random "
                             "Hugging Face parts built into WORKDIR/models (a VideoMAE, an AST, a Llama-style LM "
                             "with LoRA; configs/demo_causal_lm*.json)")
    parser.add_argument("--config", type=Path, default=None,
                        help="training config (default: the recipe's); its model_config path is resolved relative "
                             "to the config file")
    parser.add_argument("--num-train", type=int, default=400, help="training clips")
    parser.add_argument("--num-val", type=int, default=10, help="validation clips (prepared, not used for training)")
    parser.add_argument("--num-test", type=int, default=60, help="held-out test clips captioned and scored")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (training uses the config's seed)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op CPU threads; 1 leaves the other core to the data-loading worker")
    parser.add_argument("--batch-size", type=int, default=20, help="test clips captioned per forward pass")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                        help="where to train and caption (the demo is sized for a CPU; auto: CUDA when "
                             "available; cuda on a machine without CUDA is an error)")


LOSS_CURVE_POINTS = 60


def train_argv(data_dir: Path, output_dir: Path, stored_frames: int, epochs: int | None, device: str,
               config_file: Path, train_flags: dict, num_train: int) -> list[str]:
    # A rerun of the demo trains afresh: the previous demo run in output_dir is replaced.
    argv = ["--config", str(config_file), "--data_dir", str(data_dir), "--output_dir", str(output_dir),
            "--overwrite_output_dir", "--train_yaml", f"metadata/train_{stored_frames}frames.yaml",
            "--val_yaml", f"metadata/val_{stored_frames}frames.yaml", "--device", device]
    if epochs is not None:
        argv += ["--num_train_epochs", str(epochs)]
    # Log (and so plot) about LOSS_CURVE_POINTS points whatever the run length.
    batch = int(train_flags.get("per_gpu_train_batch_size", 64))
    total_steps = max(1, num_train // batch) * int(epochs or train_flags.get("num_train_epochs", 1))
    argv += ["--logging_steps", str(max(1, total_steps // LOSS_CURVE_POINTS))]
    return argv


# ----------------------------------------------------------------------------------------------------- stages

class StageClock:
    """Prints a header per stage and records its wall time."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def run(self, name: str, fn, *args, **kwargs):
        index = STAGES.index(name) + 1
        print(f"\n== [{index}/{len(STAGES)}] {name}", flush=True)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        print(f"== {name} done in {self.seconds[name]:.1f} s", flush=True)
        return result

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self._start, 2)


def stage_synth(raw: Path, counts: dict[str, int], seed: int) -> dict:
    existing = raw / "attributes.json"
    if existing.is_file():  # a rerun reuses the dataset when it is the same one
        attributes = read_json(existing, "demo attributes")
        have = {s: sum(a["split"] == s for a in attributes.values()) for s in synth.SPLITS}
        same_seed = (raw / ".seed").is_file() and (raw / ".seed").read_text() == str(seed)
        if have == counts and same_seed:
            print("dataset already generated; reusing it")
            return {"attributes": attributes, "captions": read_json(raw / "captions.json", "demo captions")}
    result = synth.synthesize(raw, counts, seed=seed)
    write_text_atomic(raw / ".seed", str(seed))
    return result


def stage_prepare(raw: Path, frames: int, size: int, workers: int) -> None:
    from avlformer.data.prepare import PrepareError, prepare_dataset

    try:
        result = prepare_dataset(raw, num_frames=frames, short_side=size, workers=workers)
    except PrepareError as error:
        raise RuntimeError(f"prepare: {error}") from None
    errors = result.errors
    if errors:  # the generated dataset has no bad clip: any error is a bug worth stopping for
        raise RuntimeError(f"prepare left out {len(errors)} clip(s) or caption(s), e.g. {errors[0].file}: "
                           f"{errors[0].reason}; see {raw / 'prepare_report.json'}")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the data-loading workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_train(argv: list[str]):
    """The training result and the CPU seconds it took (on a shared machine a fairer cost than wall time)."""
    from avlformer.training.args import parse_train_args
    from avlformer.training.loop import train

    start = cpu_seconds()
    result = train(parse_train_args(argv))
    if result.last_checkpoint is None:
        raise RuntimeError("training wrote no checkpoint")
    return result, round(cpu_seconds() - start, 1)


@dataclass
class CaptionResults:
    normal: object   # pipeline.CaptionRun
    silenced: object
    loaded: object   # pipeline.LoadedModel: the captioning model, its config and recipe (the report reuses it)


def stage_caption(checkpoint: Path, raw: Path, device: str, batch_size: int, out_dir: Path) -> CaptionResults:
    """Caption the test split as `avlformer infer` does (the checkpoint's recipe and vocabulary, the raw videos
    and their mp3s), then again with every soundtrack silenced."""
    from avlformer.inference import pipeline
    from avlformer.inference.predictions import write_predictions

    loaded = pipeline.load_for_inference(checkpoint, device)
    listing = pipeline.list_videos(raw / "videos" / "test")
    decoding = pipeline.checkpoint_decoding(loaded.config)
    runs = []
    for name, silence in (("test.json", False), ("test_silenced.json", True)):
        run = pipeline.caption_videos(loaded, listing.videos, decoding, audio_dir=raw / "audio_mp3" / "test",
                                      batch_size=batch_size, silence_audio=silence,
                                      desc="caption, audio silenced" if silence else "caption")
        run.failures = listing.problems + run.failures
        write_predictions(run, out_dir / name, str(checkpoint))
        runs.append(run)
    return CaptionResults(normal=runs[0], silenced=runs[1], loaded=loaded)


def attribute_accuracy(predictions: dict[str, str], truth: dict[str, dict]) -> dict[str, float]:
    """Per-attribute accuracy of attributes parsed from predicted captions; a missing prediction counts wrong."""
    scores = {}
    for attribute in (*synth.VISUAL_ATTRIBUTES, *synth.SOUND_ATTRIBUTES):
        hits = [synth.parse_attributes(predictions.get(cid, ""))[attribute] == attrs[attribute]
                for cid, attrs in truth.items()]
        scores[attribute] = float(np.mean(hits)) if hits else 0.0
    return scores


def stage_evaluate(results: CaptionResults, truth: dict[str, dict], references: dict[str, str]) -> dict:
    from avlformer.evaluation.coco_metrics import caption_metrics

    normal = {p.video_id: p.caption for p in results.normal.predictions}
    silenced = {p.video_id: p.caption for p in results.silenced.predictions}
    acc, acc_silenced = attribute_accuracy(normal, truth), attribute_accuracy(silenced, truth)
    metrics = {f"{prefix}{group}_accuracy": float(np.mean([scores[name] for name in names]))
               for prefix, scores in (("", acc), ("silenced_", acc_silenced))
               for group, names in (("visual", synth.VISUAL_ATTRIBUTES), ("sound", synth.SOUND_ATTRIBUTES))}
    metrics["sound_chance"] = float(np.mean([1 / len(synth.ATTRIBUTE_VALUES[a]) for a in synth.SOUND_ATTRIBUTES]))
    refs = {cid: [references[cid]] for cid in normal}
    # METEOR is left out: its Java start-up and paraphrase tables take longer than the rest of the scoring.
    coco = caption_metrics(normal, refs, scorers=("bleu", "rouge", "cider")) if normal else {}
    metrics["cider"] = coco.get("CIDEr", float("nan"))
    metrics["bleu4"] = coco.get("Bleu_4", float("nan"))
    return {"headline": metrics, "caption_metrics": coco,
            "attribute_accuracy": acc, "silenced_attribute_accuracy": acc_silenced,
            "num_test_clips": len(truth), "num_captioned": len(normal),
            "failed": [f.message() for f in results.normal.failures]}


def read_loss_curve(log_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if "train/loss" not in accumulator.Tags().get("scalars", []):
        return []
    return [(event.step, event.value) for event in accumulator.Scalars("train/loss")]


def stage_report(path: Path, results: CaptionResults, evaluation: dict, truth: dict, references: dict,
                 raw: Path, train_dir: Path, checkpoint: Path, stage_seconds: dict, recipe: str) -> None:
    from avlformer.data import audio as audio_io
    from avlformer.data import media
    from avlformer.demo.report import ClipReport, ReportData, render_report

    model, config = results.loaded.model, results.loaded.config
    sample_rate = results.loaded.recipe.sample_rate
    silenced = {p.video_id: p.caption for p in results.silenced.predictions}
    clips = []
    for prediction in sorted(results.normal.predictions, key=lambda p: p.video_id):
        cid = prediction.video_id
        mp3 = raw / "audio_mp3" / "test" / f"{cid}.mp3"
        clips.append(ClipReport(
            clip_id=cid, frames=media.read_frames(prediction.path, 6, 96).frames,
            waveform=audio_io.decode_audio(mp3.read_bytes(), sample_rate, source=str(mp3)), sample_rate=sample_rate,
            reference=references[cid], prediction=prediction.caption, truth=truth[cid],
            confidence=prediction.confidence, silenced_prediction=silenced.get(cid)))
    headline = evaluation["headline"]
    flat = {**headline, **{f"{k} (caption metric)": v for k, v in evaluation["caption_metrics"].items()},
            **{f"accuracy: {k}": v for k, v in evaluation["attribute_accuracy"].items()},
            **{f"accuracy, audio silenced: {k}": v for k, v in evaluation["silenced_attribute_accuracy"].items()},
            **{f"seconds: {k}": v for k, v in stage_seconds.items()}}
    notes = [f"{len(clips)} held-out test clips; checkpoint {checkpoint}; recipe {recipe}",
             "Attributes are parsed from the predicted captions and compared with the generator's ground truth.",
             "Silenced: the same videos captioned again with the soundtrack replaced by zeros.",
             f"The model sees {config.num_frames} frames of {config.image_size} px and hears the first "
             f"{config.audio.clip_seconds:g} s of each soundtrack (the spectrograms show the whole clip)."]
    notes += [f"failed to decode: {error}" for error in evaluation["failed"]]
    data = ReportData(title="AVLFormer demo", clips=clips, metrics=flat, loss_curve=read_loss_curve(train_dir / "log"),
                      mask=model.av_attention_mask(), num_video_tokens=config.num_video_tokens, notes=notes)
    write_text_atomic(path, render_report(data))


# ----------------------------------------------------------------------------------------------------- main

def run_demo(args: argparse.Namespace) -> dict:
    import torch

    from avlformer.device import resolve_device
    from avlformer.modeling.hf_causal_lm import HFCausalLMConfig
    from avlformer.modeling.parts import ROLES, describe_part
    from avlformer.training.args import load_config_file  # imported late: it pulls in torch

    device = resolve_device(args.device).type  # one rule for training and captioning; fails before any work
    recipe = RECIPES[args.recipe]
    config_path = args.config or default_config_path(recipe.name)
    train_flags = load_config_file(config_path)  # the demo config is a training flag file
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    work: Path = args.workdir
    check_workdir(work, config_path)
    raw, train_dir, predictions_dir = work / "raw", work / "train", work / "predictions"
    work.mkdir(parents=True, exist_ok=True)
    if recipe.parts:  # the parts' folders exist before the model configuration (which reads them) is resolved
        prompt = train_flags.get("decoder_prompt") or HFCausalLMConfig.prompt
        train_flags.update(build_parts(configs_dir() / recipe.parts, work / "models", demo_words(prompt)))
    # The resolved training flags go to a file in the work folder, so `avlformer train --config` could rerun it.
    train_config = work / "train_config.json"
    write_text_atomic(train_config, json.dumps(train_flags, indent=1))
    model_config = resolve_model_config(train_config, raw, train_dir)
    # Prepare stores exactly what the model reads (its frame count, its crop size as the shorter side).
    stored_frames, stored_size = int(model_config.num_frames), int(model_config.image_size)
    argv = train_argv(raw, train_dir, stored_frames, args.epochs, device, train_config, train_flags,
                      args.num_train)

    clock = StageClock()
    data = clock.run("synth", stage_synth, raw, counts, args.seed)
    clock.run("prepare", stage_prepare, raw, stored_frames, stored_size, len(os.sched_getaffinity(0)))
    result, train_cpu = clock.run("train", stage_train, argv)
    checkpoint = Path(result.last_checkpoint)
    results = clock.run("caption", stage_caption, checkpoint, raw, device, args.batch_size, predictions_dir)
    truth = {cid: a for cid, a in data["attributes"].items() if a["split"] == "test"}
    evaluation = clock.run("evaluate", stage_evaluate, results, truth, data["captions"])
    report = work / "report.html"
    clock.run("report", stage_report, report, results, evaluation, truth, data["captions"], raw, train_dir,
              checkpoint, clock.seconds, recipe.name)
    headline = {**evaluation["headline"], "wall_seconds": clock.total, "train_cpu_seconds": train_cpu}
    metrics = {**headline, "stage_seconds": clock.seconds, **{k: v for k, v in evaluation.items() if k != "headline"},
               "checkpoint": str(checkpoint), "train_steps": result.global_step,
               "threads": threads, "clips": counts, "recipe": recipe.name,
               "parts": {role: describe_part(role, getattr(model_config, role)) for role in ROLES}}
    write_text_atomic(work / "metrics.json", json.dumps(metrics, indent=1))
    print_summary(work, metrics)
    return metrics


def check_workdir(work: Path, config_path: Path) -> None:
    """The work folder must not lie inside a checkpoint, and the files the demo writes at its top must not be the
    --config it reads."""
    problem = output_folder_problem(work, "--workdir")
    for name in ("train_config.json", "metrics.json", "report.html"):
        problem = problem or output_file_problem(work / name, "--workdir", inputs=(config_path,))
    if problem:
        raise ValueError(problem)


def resolve_model_config(train_config: Path, raw: Path, train_dir: Path):
    """The model configuration training will build (to know the frame count and size to prepare)."""
    from avlformer.training.args import parse_train_args

    return parse_train_args(["--config", str(train_config), "--data_dir", str(raw),
                             "--output_dir", str(train_dir)]).model


def print_summary(work: Path, metrics: dict) -> None:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    print("\n" + "=" * 72)
    print(f"report:  {(work / 'report.html').resolve()}")
    print(f"metrics: {(work / 'metrics.json').resolve()}")
    print(f"visual attributes {pct(metrics['visual_accuracy'])}, sound attributes {pct(metrics['sound_accuracy'])}"
          f" (audio silenced: visual {pct(metrics['silenced_visual_accuracy'])}, sound "
          f"{pct(metrics['silenced_sound_accuracy'])}; chance {pct(metrics['sound_chance'])})")
    print(f"CIDEr {metrics['cider']:.3f}  BLEU-4 {metrics['bleu4']:.3f}  wall {metrics['wall_seconds']:.0f} s "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in metrics['stage_seconds'].items())})")
    print("=" * 72)


def main(args: argparse.Namespace) -> int:
    try:
        run_demo(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"avlformer demo: {error}", file=sys.stderr)
        return 1
    return 0
