"""`avlformer caption`: print one caption per video file (audio from the video itself)."""

from __future__ import annotations

import argparse
import logging
import sys

from avlformer.inference import pipeline
from avlformer.inference.cli import add_decoding_arguments, decoding_from_args, load_for_inference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint (our folder, upstream folder or model.bin)")
    parser.add_argument("videos", nargs="+", help="video files")
    add_decoding_arguments(parser)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        model, config, device = load_for_inference(args.model, args.device)
        decoding = decoding_from_args(config, args)
    except (FileNotFoundError, ValueError) as error:
        print(f"avlformer caption: {error}", file=sys.stderr)
        return 2
    run = pipeline.caption_videos(model, args.videos, pipeline.input_spec_from_config(config), decoding, device,
                                  batch_size=args.batch_size, num_workers=args.num_workers,
                                  progress=len(args.videos) > 1)
    by_path = {p.path: p for p in run.predictions}
    for video in args.videos:
        prediction = by_path.get(str(video))
        if prediction is not None:
            print(f"{video}\t{prediction.caption}")
    for failure in run.failures:
        print(f"FAILED {failure.error}", file=sys.stderr)
    return 1 if run.failures else 0
