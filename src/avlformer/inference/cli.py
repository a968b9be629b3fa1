"""`avlformer infer`: caption every video in a folder and write COCO-format predictions and a confidence sidecar.

Every flag and path is checked before any video is decoded; a run that captioned fewer videos than it found exits
1 and names each one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from avlformer.device import resolve_device
from avlformer.inference import pipeline
from avlformer.inference.predictions import check_output_path, write_predictions


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--num-beams", type=int, default=None, help="beam width (default: the checkpoint's)")
    parser.add_argument("--max-gen-length", type=int, default=None,
                        help="longest caption in tokens, [CLS] included (default: the checkpoint's; at most the "
                             "model's text positions)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="beam-search length penalty (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="video-decoding worker processes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-model-dir", required=True,
                        help="checkpoint: our folder, an upstream checkpoint folder (model.bin + ../log/args.json) "
                             "or a released model.bin")
    parser.add_argument("--test-video-fname", required=True, help="folder of videos (mp4, mkv, webm, avi, mov, m4v)")
    parser.add_argument("--test-audio-fname", default=None,
                        help="folder of <id>.mp3 soundtracks (default: each video's own audio)")
    parser.add_argument("--output", default="prediction_coco_fmt.json",
                        help="COCO-format predictions: [{\"image_id\": <video file stem>, \"caption\": ...}]; "
                             "confidences etc. go to <output stem>.confidence.json")
    add_decoding_arguments(parser)
    # The original's inference.sh passes these; they were already implied (uncased vocab, test mode).
    parser.add_argument("--do-lower-case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--do-test", action="store_true", help=argparse.SUPPRESS)


def check_run_flags(args: argparse.Namespace) -> None:
    """One-line ValueErrors for flag values no run can use (before a checkpoint is loaded)."""
    pipeline.check_loader_options(args.batch_size, args.num_workers)
    # The flags alone, before the checkpoint's settings are known (the limit set by the model comes later).
    given = {"num_beams": args.num_beams, "max_length": args.max_gen_length, "length_penalty": args.length_penalty}
    pipeline.DecodingOptions(**{name: value for name, value in given.items() if value is not None})
    resolve_device(args.device)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check_run_flags(args)
        listing = pipeline.list_videos(args.test_video_fname)
        pipeline.check_unique_ids(listing.videos)
        if args.test_audio_fname and not Path(args.test_audio_fname).is_dir():
            what = "is not a folder" if Path(args.test_audio_fname).exists() else "audio folder not found"
            raise FileNotFoundError(f"{args.test_audio_fname}: {what}")
        check_output_path(args.output, inputs=[args.eval_model_dir],
                          input_folders=[args.test_video_fname, *filter(None, [args.test_audio_fname])])
        loaded = pipeline.load_for_inference(args.eval_model_dir, args.device)
        decoding = pipeline.checkpoint_decoding(loaded.config, args.num_beams, args.max_gen_length,
                                                args.length_penalty)
    except (OSError, ValueError) as error:
        print(f"avlformer infer: {error}", file=sys.stderr)
        return 2
    try:
        run = pipeline.caption_videos(loaded, listing.videos, decoding, audio_dir=args.test_audio_fname,
                                      batch_size=args.batch_size, num_workers=args.num_workers)
    except KeyboardInterrupt:
        print(f"\navlformer infer: interrupted; nothing written to {args.output}", file=sys.stderr)
        return 130
    run.failures = listing.problems + run.failures
    sidecar = write_predictions(run, args.output, args.eval_model_dir)
    asked = len(listing.videos) + len(listing.problems)
    print(f"captioned {len(run.predictions)} of {asked} videos on {loaded.device}; predictions: {args.output}; "
          f"confidences: {sidecar}")
    for failure in run.failures:
        print(f"NOT CAPTIONED {failure.message()}", file=sys.stderr)
    return 1 if run.failures else 0
