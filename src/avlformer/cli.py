"""The ``avlformer`` command: one subcommand per job, each implemented in the module that owns the job; every
flag accepts the original's underscore spelling and our hyphen spelling (``avlformer.flags``)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Large CPU tensors on transparent huge pages, so memory-bound training ops do not pay a page fault per fresh page
# (docs/training.md, Training speed and memory). torch reads it when it starts: set before any command imports it.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from avlformer.flags import normalize_flag_spelling

# name -> (module, one-line help). Each module defines add_arguments(parser) and main(args) -> int.
COMMANDS = {
    "synth": ("avlformer.data.synth_cli", "write a synthetic dataset (the demo's, or --preset scenes) as raw "
              "FAVDBench-layout data"),
    "prepare": ("avlformer.data.prepare", "turn raw videos + audio + captions into training shards"),
    "extract-features": ("avlformer.training.extract_features", "cache the frozen encoders' outputs for "
                         "`train --features` (fast experiments)"),
    "train": ("avlformer.training.cli", "train a model (run.sh launches this under torchrun)"),
    "infer": ("avlformer.inference.cli", "caption every video in a folder, write COCO-format predictions"),
    "caption": ("avlformer.inference.caption", "print one caption per video file"),
    "evaluate": ("avlformer.evaluation.cli", "score predictions against references"),
    "serve": ("avlformer.serve.cli", "a local web page (and JSON endpoint) that captions uploaded videos"),
    "merge-lora": ("avlformer.merge_lora", "write a checkpoint with its causal-LM decoder's LoRA adapters merged "
                   "into the base weights"),
    "demo": ("avlformer.demo.cli", "synth -> prepare -> train -> infer -> evaluate -> HTML report, on CPU"),
}


def build_parser(names) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avlformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(metavar="COMMAND", required=True)
    for name in names:
        module_name, help_text = COMMANDS[name]
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = normalize_flag_spelling(list(sys.argv[1:] if argv is None else argv))
    # Only the requested subcommand's parser when there is one: importing every command pulls in torch etc.
    args = build_parser([argv[0]] if argv and argv[0] in COMMANDS else COMMANDS).parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
