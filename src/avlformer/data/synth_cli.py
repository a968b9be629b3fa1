"""`avlformer synth`: write a synthetic dataset in the raw FAVDBench layout, of one of the presets (the demo's,
``data/synth``; the benchmark in miniature, ``data/synth_scenes``)."""

from __future__ import annotations

import argparse
import sys

from avlformer.data import synth_scenes
from avlformer.data.synth import DEMO, SynthError, synthesize

PRESETS = {"demo": DEMO, "scenes": synth_scenes.SCENES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (FAVDBench raw layout)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="demo: the demo's one-shape clips, one caption each; scenes: the benchmark in "
                             "miniature (docs/scenes.md), 1-3 objects, 1-2 sounds, 5 references per clip")
    parser.add_argument("--num-train", type=int, default=200, help="training clips")
    parser.add_argument("--num-val", type=int, default=20, help="validation clips")
    parser.add_argument("--num-test", type=int, default=40, help="test clips")
    parser.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of this seed")
    parser.add_argument("--workers", type=int, default=None,
                        help="encoding processes (default: CPU count); the output does not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that holds data synth did not write (it is replaced)")


def main(args: argparse.Namespace) -> int:
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    try:
        result = synthesize(args.out, counts, seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                            preset=PRESETS[args.preset])
    except SynthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(result['captions'])} clips to {args.out}")
    return 0
