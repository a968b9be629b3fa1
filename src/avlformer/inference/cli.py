"""`avlformer infer`: caption every video in a folder and write COCO-format predictions (+ a confidence sidecar).

Replaces upstream's `src/tasks/inference.py` (FACTS §5), which only logged captions: here the predictions file is
``[{"image_id": <video file stem>, "caption": ...}, ...]`` and ``<output stem>.confidence.json`` beside it holds
each caption's confidence, where its audio came from, the decoding settings and every video that failed to decode.
Decoding settings default to the checkpoint's and flags given here override them (upstream ignored the command
line and used args.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from avlformer.atomic import write_text_atomic
from avlformer.inference import pipeline


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--num-beams", type=int, default=None, help="beam width (default: the checkpoint's)")
    parser.add_argument("--max-gen-length", type=int, default=None,
                        help="longest caption in tokens (default: the checkpoint's)")
    parser.add_argument("--length-penalty", type=float, default=None,
                        help="beam-search length penalty (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="video-decoding worker processes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-model-dir", required=True,
                        help="checkpoint: our folder, an upstream checkpoint folder (model.bin + ../log/args.json) "
                             "or a released model.bin")
    parser.add_argument("--test-video-fname", required=True, help="folder of videos (mp4, mkv, webm, avi, mov)")
    parser.add_argument("--test-audio-fname", default=None,
                        help="folder of <id>.mp3 soundtracks (default: each video's own audio)")
    parser.add_argument("--output", default="prediction_coco_fmt.json",
                        help="COCO-format predictions: [{\"image_id\": <video file stem>, \"caption\": ...}]; "
                             "confidences etc. go to <output stem>.confidence.json")
    add_decoding_arguments(parser)
    # Upstream's inference.sh passes these; they were already implied (uncased vocab, test mode).
    parser.add_argument("--do-lower-case", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--do-test", action="store_true", help=argparse.SUPPRESS)


def load_for_inference(checkpoint: str, device_name: str):
    """(model, config, device) with the model in eval mode on the chosen device."""
    from avlformer.modeling.checkpoint import load_model

    device = pipeline.resolve_device(device_name)
    model, config = load_model(checkpoint, device)
    model.to(device).eval()
    return model, config, device


def decoding_from_args(config, args: argparse.Namespace) -> pipeline.DecodingOptions:
    return pipeline.merge_decoding(pipeline.checkpoint_decoding(config), num_beams=args.num_beams,
                                   max_length=args.max_gen_length, length_penalty=args.length_penalty)


def write_predictions(run: pipeline.CaptionRun, output: str | Path, checkpoint: str) -> Path:
    output = Path(output)
    write_text_atomic(output, json.dumps(pipeline.coco_predictions(run.predictions), indent=1))
    sidecar = pipeline.sidecar_path(output)
    write_text_atomic(sidecar, json.dumps(pipeline.sidecar_payload(run, checkpoint), indent=1))
    return sidecar


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        videos = pipeline.list_videos(args.test_video_fname)
        pipeline.check_unique_ids(videos)
        if args.test_audio_fname and not Path(args.test_audio_fname).is_dir():
            raise FileNotFoundError(f"{args.test_audio_fname}: audio folder not found")
        model, config, device = load_for_inference(args.eval_model_dir, args.device)
        decoding = decoding_from_args(config, args)
    except (FileNotFoundError, ValueError) as error:
        print(f"avlformer infer: {error}", file=sys.stderr)
        return 2
    spec = pipeline.input_spec_from_config(config)
    run = pipeline.caption_videos(model, videos, spec, decoding, device, audio_dir=args.test_audio_fname,
                                  batch_size=args.batch_size, num_workers=args.num_workers)
    sidecar = write_predictions(run, args.output, args.eval_model_dir)
    print(f"captioned {len(run.predictions)} of {len(videos)} videos on {device}; predictions: {args.output}; "
          f"confidences: {sidecar}")
    for failure in run.failures:
        print(f"FAILED {failure.error}", file=sys.stderr)
    return 1 if run.failures else 0
