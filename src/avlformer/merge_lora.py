"""``avlformer merge-lora CHECKPOINT OUTPUT``: a checkpoint whose causal-LM decoder trained LoRA adapters, written
again with the adapters folded into the base weights (a ``full`` decoder: plain layers, the LM's own tensor
names), with its recipe and tokenizer (docs/models.md)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="our checkpoint folder with an hf_causal_lm decoder trained with LoRA")
    parser.add_argument("output", help="the folder to write (replaced atomically)")


def main(args: argparse.Namespace) -> int:
    from avlformer.modeling.checkpoint import (checkpoint_recipe, checkpoint_vocab_dir, load_model,
                                               write_checkpoint_files)
    from avlformer.atomic import atomic_folder

    try:
        model, config = load_model(args.checkpoint)
        decoder = model.part("text")
        if getattr(config.text, "training", None) != "lora":
            raise ValueError(f"{args.checkpoint}: its decoder has no LoRA adapters to merge")
        decoder.unload_lora()
        with atomic_folder(args.output) as staging:
            write_checkpoint_files(staging, model.state_dict(), config, checkpoint_recipe(args.checkpoint),
                                   vocab_dir=checkpoint_vocab_dir(args.checkpoint))
    except (FileNotFoundError, ValueError) as error:
        print(f"avlformer merge-lora: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: the LoRA adapters merged into the decoder's weights")
    return 0
