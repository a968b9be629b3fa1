"""`avlformer caption`: print ``<path><TAB><caption>`` for each video file, in the order given.

Audio comes from each video itself. The path is printed as it was typed, with tabs, line breaks and backslashes
escaped (``pipeline.display_path``) so that every output line splits into exactly two fields. Every path is
checked before the model is loaded; a video that gets no caption is named on stderr with the reason, and the
command then exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from avlformer.data.clip_ids import clip_id_from_path
from avlformer.inference import pipeline
from avlformer.inference.cli import add_decoding_arguments, check_run_flags, load_checked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint (our folder, upstream folder or model.bin)")
    parser.add_argument("videos", nargs="+", help="video files")
    add_decoding_arguments(parser)


def input_problem(video: str) -> str | None:
    """Why ``video`` cannot be captioned before decoding it, or None."""
    if Path(video).is_dir():
        return ("is a folder, not a video file (for a folder of videos use "
                "`avlformer infer --eval_model_dir CKPT --test_video_fname DIR`)")
    return pipeline.not_a_video_file(Path(video))


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    problems = {index: pipeline.ClipFailure(index, clip_id_from_path(video), video, reason)
                for index, video in enumerate(args.videos) if (reason := input_problem(video))}
    todo = [(index, video) for index, video in enumerate(args.videos) if index not in problems]
    try:
        check_run_flags(args)
        loaded, decoding = load_checked(args.model, args) if todo else (None, None)
    except (OSError, ValueError) as error:
        print(f"avlformer caption: {error}", file=sys.stderr)
        return 2
    captions: dict[int, str] = {}
    if todo:
        try:
            run = pipeline.caption_videos(loaded, [video for _, video in todo], decoding,
                                          batch_size=args.batch_size, num_workers=args.num_workers,
                                          progress=len(todo) > 1)
        except KeyboardInterrupt:
            print("\navlformer caption: interrupted", file=sys.stderr)
            return 130
        # caption_videos numbers the videos it was given; map back to the positions on the command line.
        captions = {todo[p.index][0]: p.caption for p in run.predictions}
        problems.update({todo[f.index][0]: f for f in run.failures})
    for index, video in enumerate(args.videos):
        if index in captions:
            print(f"{pipeline.display_path(video)}\t{captions[index]}")
    for index in sorted(problems):
        print(f"NOT CAPTIONED {problems[index].message()}", file=sys.stderr)
    if problems:
        print(f"avlformer caption: {len(captions)} of {len(args.videos)} videos captioned", file=sys.stderr)
    return 1 if problems else 0
