"""``avlformer prepare``: raw videos, audio and captions -> the original's training files plus the recipe and
``prepare_report.json`` (docs/data.md). ``prepare_dataset`` does the work, one split at a time (``split``, each
clip in ``clip_work``); ``main`` is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avlformer.atomic import write_text_atomic
from avlformer.data.clip_ids import clip_id_from_path, is_video_name
from avlformer.data.file_problems import environment_message, is_environment_error
from avlformer.data.prepare.caption_sources import Captions, caption_source, keep_released_copy, load_captions
from avlformer.data.prepare.layout import (DEFAULT_SPLITS, ERROR, WARNING, EnvironmentFault, Layout, PrepareError,
                                          Problem, prepare_lock, split_name_problem)
from avlformer.data.prepare.outputs_record import OutputsRecord
from avlformer.data.prepare.split import find_videos, prepare_split
from avlformer.data.recipe import SHORT_SIDE, STORED_FRAMES, PreprocessRecipe

REPORT_NAME = "prepare_report.json"


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class PrepareResult:
    report: dict                                   # what prepare_report.json holds
    prepared: dict[str, int]                       # clips written, per prepared split
    problems: list[Problem]
    already_prepared: list[str] = field(default_factory=list)   # splits with no videos folder but a yaml
    report_path: Path | None = None

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == ERROR]


def _splits_to_run(data_dir: Path, splits: list[str] | None, num_frames: int
                   ) -> tuple[list[str], list[str], list[Problem]]:
    """(splits to prepare, splits already prepared without raw videos, problems)."""
    todo, done, problems = [], [], []
    for split in splits or DEFAULT_SPLITS:
        layout = Layout(data_dir, split, num_frames)
        if layout.videos.is_dir():
            todo.append(split)
        elif layout.yaml.is_file():  # e.g. the released processed files: usable as they are
            done.append(split)
        elif splits is not None:
            problems.append(Problem(ERROR, layout.rel(layout.videos), "split folder not found", split))
    if not todo and not done and not problems:
        problems.append(Problem(ERROR, "videos", f"no split folders ({', '.join(splits or DEFAULT_SPLITS)}) "
                                f"under {data_dir / 'videos'}"))
    return todo, done, problems


def _orphan_captions(data_dir: Path, captions: Captions) -> list[Problem]:
    """Captions whose id has no video in any split folder."""
    video_ids = {clip_id_from_path(path) for path in (data_dir / "videos").glob("*/*") if is_video_name(path)}
    return [Problem(ERROR, captions.source, f"caption for {clip_id!r} has no video in videos/<split>/",
                    id=clip_id) for clip_id in sorted(set(captions.texts) - video_ids)]


def _shared_ids(layout: Layout, source: Path, videos: dict[str, Path], captions: Captions,
                seen: dict[tuple[Path, str], str]) -> list[Problem]:
    """Warnings for clips whose id a clip of an earlier split already has, with the same captions file: both
    get its one caption, which is wrong when they are different clips."""
    problems = []
    for clip_id, path in videos.items():
        if clip_id not in captions.texts:
            continue
        other = seen.setdefault((source, clip_id), layout.rel(path))
        if other != layout.rel(path):
            problems.append(Problem(WARNING, layout.rel(path), f"id {clip_id!r} is also {other}: both get the one "
                                    f"caption {captions.source} has for it; rename one if they are different "
                                    f"clips", layout.split, clip_id))
    return problems


def prepare_dataset(data_dir: str | os.PathLike, *, splits: list[str] | None = None,
                    num_frames: int = STORED_FRAMES, short_side: int = SHORT_SIDE, workers: int | None = None,
                    captions: str | os.PathLike | None = None, progress: bool = True) -> PrepareResult:
    """Prepare every split of ``data_dir`` that has a ``videos/<split>/`` folder (``splits``: only those, and a
    missing one is an error). Bad clips and captions are reported in the result, never raised; a mistake that
    leaves nothing to do raises PrepareError, a failure of the machine its subclass EnvironmentFault (a rerun
    resumes). ``short_side``: the shorter side of the stored frames (the crop comes later)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PrepareError(f"{data_dir}: data dir not found")
    try:
        recipe = PreprocessRecipe(stored_frames=num_frames, short_side=short_side)
    except ValueError as error:
        raise PrepareError(str(error)) from None
    for split in splits or ():
        if (bad_name := split_name_problem(split)) is not None:
            raise PrepareError(f"--splits: {bad_name}")
    workers = max(1, default_workers() if workers is None else workers)
    override = Path(captions) if captions is not None else None
    with prepare_lock(data_dir):
        try:
            return _prepare_locked(data_dir, splits, recipe, workers, override, progress)
        except OSError as error:
            if is_environment_error(error):
                raise EnvironmentFault(environment_message(error, data_dir)) from None
            raise


def _prepare_locked(data_dir: Path, splits: list[str] | None, recipe: PreprocessRecipe, workers: int,
                    override: Path | None, progress: bool) -> PrepareResult:
    record = OutputsRecord(data_dir)
    todo, done, problems = _splits_to_run(data_dir, splits, recipe.stored_frames)
    report = {"data_dir": str(data_dir), "recipe": recipe.to_dict(), "splits": {}, "problems": []}
    loaded: dict[Path, Captions] = {}
    assigned: set[int] = set()      # caption problems counted in the split whose video they concern
    seen: dict[tuple[Path, str], str] = {}     # (captions file, id) -> the first video with that id
    for split in todo:
        layout = Layout(data_dir, split, recipe.stored_frames, recipe.short_side)
        source = caption_source(layout, override, record)
        if source is None:
            problems.append(Problem(ERROR, layout.rel(layout.videos), "no captions found (captions.json, "
                                    "captions.csv or metadata/<split>.caption.tsv); split skipped", split))
            continue
        if source not in loaded:
            loaded[source] = load_captions(source, data_dir)
        split_captions = loaded[source]
        keep_released_copy(source, layout)
        videos, split_problems = find_videos(layout)
        split_problems += _shared_ids(layout, source, videos, split_captions, seen)
        for problem in split_captions.problems:
            if problem.id in videos:
                assigned.add(id(problem))
                split_problems.append(dataclasses.replace(problem, split=split))
        count, clip_problems = prepare_split(layout, split_captions, videos, workers, record, progress)
        split_problems += clip_problems
        problems += split_problems
        report["splits"][split] = {"prepared": count,
                                   "errors": sum(p.severity == ERROR for p in split_problems),
                                   "warnings": sum(p.severity == WARNING for p in split_problems)}
    for source_captions in loaded.values():  # a shared captions file: its other problems once, not per split
        problems += [p for p in source_captions.problems if id(p) not in assigned]
        problems += _orphan_captions(data_dir, source_captions)
    report["problems"] = [asdict(problem) for problem in problems]
    report_path = data_dir / REPORT_NAME
    write_text_atomic(report_path, json.dumps(report, indent=2))
    return PrepareResult(report=report, prepared={split: counts["prepared"] for split, counts
                                                  in report["splits"].items()},
                         problems=problems, already_prepared=done, report_path=report_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="dataset root: videos/<split>/, optional audio_mp3/<split>/, captions (see docs/data.md)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to prepare (default: those of train/val/test that have a videos folder)")
    parser.add_argument("--num-frames", type=int, default=STORED_FRAMES, help="frames sampled uniformly per clip")
    parser.add_argument("--image-size", dest="short_side", metavar="PIXELS", type=int, default=SHORT_SIDE,
                        help="shorter side of the stored frames, pixels (the training crop is cut from these)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes decoding clips in parallel (1 = in this process)")
    parser.add_argument("--captions", type=Path, default=None,
                        help="captions file (.json {id: caption}, .csv id,caption, or a released .caption.tsv); "
                             "default: a metadata/<split>.caption.tsv you provided, else captions.json, else "
                             "captions.csv (never a file an earlier prepare wrote)")
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when any clip or caption was left out because of an error")


def _print_summary(result: PrepareResult, limit: int = 30) -> None:
    for split in result.already_prepared:
        print(f"{split}: no videos/{split} folder but its metadata yaml exists: already prepared, nothing to do")
    for split, counts in result.report["splits"].items():
        print(f"{split}: {counts['prepared']} clip(s) prepared, {counts['errors']} error(s), "
              f"{counts['warnings']} warning(s)")
    for problem in result.problems[:limit]:
        # A name holding tabs or line breaks (what is being reported) is shown escaped, on one line.
        shown = problem.file if problem.file.isprintable() else ascii(problem.file)
        print(f"  {problem.severity.upper():7s} {shown}: {problem.reason}")
    if len(result.problems) > limit:
        print(f"  ... {len(result.problems) - limit} more")
    print(f"report: {result.report_path}")


def main(args: argparse.Namespace) -> int:
    """Exit status: 0 when at least one clip was prepared (or every split was already prepared), 1 when nothing
    was, or with --strict when any error was reported; 2 for a mistake that stopped the run; 130 on Ctrl-C."""
    try:
        result = prepare_dataset(args.data_dir, splits=args.splits, num_frames=args.num_frames,
                                 short_side=args.short_side, workers=args.workers, captions=args.captions)
    except EnvironmentFault as error:
        print(f"error: {error}; prepare stopped (finished clips are kept: fix this and run the same command "
              f"again)", file=sys.stderr)
        return 2
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished clips are kept; run the same command again to resume", file=sys.stderr)
        return 130
    _print_summary(result)
    if not result.already_prepared and not any(result.prepared.values()):
        return 1
    return 1 if args.strict and result.errors else 0
