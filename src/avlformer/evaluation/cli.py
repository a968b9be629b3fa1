"""``avlformer evaluate --pred PRED.json --ref REF.json [--metrics ...] [--output M.json]``: a table of the metrics,
and the metrics with per-item scores as JSON; exit statuses as docs/evaluation.md says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from avlformer.atomic import write_text_atomic
from avlformer.device import DEVICE_CHOICES, resolve_device
from avlformer.evaluation.references import load_predictions, load_references, pair_captions
from avlformer.evaluation.runner import METRIC_CHOICES, ModelPaths, evaluate, load_recipe, missing_model_paths
from avlformer.output_paths import output_file_problem

_SHOWN_IDS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="predictions: COCO result list or {id: caption} JSON")
    parser.add_argument("--ref", required=True, help="references: COCO captions dict, COCO list, or caption TSV")
    parser.add_argument("--metrics", nargs="+", choices=METRIC_CHOICES, default=None,
                        help="metrics to compute (default: all; those whose models are absent are skipped, and "
                             "scenes only with --scenes)")
    parser.add_argument("--scenes", help="scenes: the attributes.json of `avlformer synth --preset scenes`, the "
                                         "ground truth of the structured scene score (docs/scenes.md)")
    parser.add_argument("--output", help="write the metrics and per-item scores here as JSON")
    models = parser.add_argument_group("metric models and media (local paths; nothing is downloaded)")
    models.add_argument("--t5-model", help="EntityScore: local T5 folder (a copy of t5-base)")
    models.add_argument("--nltk-data", help="EntityScore: NLTK data folder holding "
                                             "taggers/averaged_perceptron_tagger_eng (default: NLTK's own paths)")
    models.add_argument("--clip-model", help="CLIPScore and AudioScore: local CLIP folder "
                                              "(a copy of openai/clip-vit-base-patch32)")
    models.add_argument("--trilip-checkpoint", help="AudioScore: upstream's TriLip.bin")
    models.add_argument("--trilip-passt-config", help="AudioScore: JSON of the TriLip audio branch's PasstConfig "
                                                      "fields (default: the paper's PaSST-S)")
    models.add_argument("--video-dir", help="AudioScore and CLIPScore: folder of the videos, <id>.mp4")
    models.add_argument("--audio-dir", help="AudioScore: folder of <id>.mp3 (default: the videos' own audio)")
    models.add_argument("--recipe", help="AudioScore and CLIPScore: the preprocessing recipe the media are made "
                        "with: a checkpoint folder or a preprocessor_config.json (default: the paper recipe)")
    models.add_argument("--num-frames", type=int, default=None,
                        help="frames sampled per video (default: the recipe's, 32 for the paper recipe)")
    models.add_argument("--device", default="auto", help=f"torch device for the learned metrics: {DEVICE_CHOICES} "
                        "(default auto: CUDA when available, else the CPU)")


def _print_id_problems(paired, pred_path: str, ref_path: str) -> None:
    for ids, text in ((paired.missing_predictions, f"reference ids with no prediction in {pred_path}"),
                      (paired.extra_predictions, f"prediction ids with no reference in {ref_path}")):
        if ids:
            shown = ", ".join(repr(i) for i in ids[:_SHOWN_IDS]) + (" ..." if len(ids) > _SHOWN_IDS else "")
            print(f"warning: {len(ids)} {text} (not scored): {shown}", file=sys.stderr)
    if paired.matched_by_stem:
        print(f"note: {paired.matched_by_stem} id(s) matched by file stem (e.g. 'test/x.mp4' = 'x')",
              file=sys.stderr)


def format_table(metrics: dict[str, float], skipped: dict[str, str]) -> str:
    width = max([len(name) for name in metrics] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in metrics.items()]
    lines += [f"[{group}] {reason}" for group, reason in skipped.items()]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        return _evaluate_command(args)
    except ValueError as error:  # flags, caption files (CaptionFileError), model and config files: named in it
        print(f"error: {error}", file=sys.stderr)
        return 2


def _evaluate_command(args: argparse.Namespace) -> int:
    paths = ModelPaths(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ModelPaths)})
    if absent := missing_model_paths(paths):
        raise ValueError(f"not found: {'; '.join(absent)}")
    if args.num_frames is not None and args.num_frames < 1:
        raise ValueError("--num-frames must be at least 1")
    resolve_device(args.device)
    load_recipe(args.recipe)
    if args.trilip_passt_config is not None:
        from avlformer.evaluation.audio_score import read_passt_config

        read_passt_config(args.trilip_passt_config)
    predictions, references = load_predictions(args.pred), load_references(args.ref)
    if args.output and (problem := output_file_problem(args.output, "--output", (args.pred, args.ref), "metrics.json")):
        raise ValueError(problem)
    paired = pair_captions(predictions, references)
    _print_id_problems(paired, args.pred, args.ref)
    if not paired.predictions:
        raise ValueError(f"no id of {args.pred} matches an id of {args.ref}")
    default = [m for m in METRIC_CHOICES if m != "scenes" or args.scenes]
    report = evaluate(paired, list(args.metrics or default), paths)
    print(format_table(report.metrics, report.skipped))
    if args.output:
        output = {"pred": args.pred, "ref": args.ref, "num_scored": len(paired.predictions),
                  "missing_predictions": paired.missing_predictions, "extra_predictions": paired.extra_predictions,
                  **dataclasses.asdict(report)}
        write_text_atomic(args.output, json.dumps(output, indent=2) + "\n")
    requested_but_skipped = [group for group in (args.metrics or []) if group in report.skipped]
    for group in requested_but_skipped:
        print(f"error: --metrics {group}: {report.skipped[group]}", file=sys.stderr)
    return 3 if requested_but_skipped else 0
