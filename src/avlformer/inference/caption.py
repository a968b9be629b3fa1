"""`avlformer caption`: print ``<path><TAB><caption>`` for each video, in order, as soon as it is captioned; a
video without a caption is named on stderr and the command exits 1."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from avlformer.data.clip_ids import clip_id_from_path
from avlformer.inference import pipeline
from avlformer.inference.captioner import Captioner
from avlformer.inference.cli import add_decoding_arguments, check_run_flags

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint (our folder, upstream folder or model.bin)")
    parser.add_argument("videos", nargs="+", help="video files")
    add_decoding_arguments(parser)


def input_problem(video: str) -> str | None:
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
        captioner = Captioner(args.model, num_beams=args.num_beams, max_length=args.max_gen_length,
                              length_penalty=args.length_penalty, device=args.device, batch_size=args.batch_size,
                              num_workers=args.num_workers) if todo else None
    except (OSError, ValueError) as error:
        print(f"avlformer caption: {error}", file=sys.stderr)
        return 2
    captioned = 0
    try:
        for result in captioner.stream([video for _, video in todo]) if todo else ():
            # The captioner numbers the videos it was given; map back to the positions on the command line.
            position, video = todo[result.index]
            for note in result.warnings:
                log.warning("%s", note)
            if result.ok:
                print(f"{pipeline.display_path(video)}\t{result.caption}", flush=True)
                captioned += 1
            else:
                problems[position] = pipeline.ClipFailure(position, clip_id_from_path(video), video, result.error)
    except KeyboardInterrupt:
        print("\navlformer caption: interrupted", file=sys.stderr)
        return 130
    for index in sorted(problems):
        print(f"NOT CAPTIONED {problems[index].message()}", file=sys.stderr)
    if problems:
        print(f"avlformer caption: {captioned} of {len(args.videos)} videos captioned", file=sys.stderr)
    return 1 if problems else 0
