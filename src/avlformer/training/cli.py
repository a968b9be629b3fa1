"""`avlformer train`: run.sh's target. One process by default; under torchrun, one process per device."""

from __future__ import annotations

import argparse
import os
import sys

from avlformer.training import args as train_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_args.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from avlformer.training.distributed import init_distributed, teardown_distributed
    from avlformer.training.loop import NonFiniteLossError, train

    try:
        resolved, explicit = train_args.resolve_args(args, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except train_args.ArgumentError as err:
        print(f"avlformer train: error: {err}", file=sys.stderr)
        return 2
    env = init_distributed(resolved.device, resolved.local_rank)
    try:
        result = train(resolved, explicit, env)
    except (train_args.ArgumentError, FileNotFoundError) as err:
        print(f"avlformer train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"avlformer train: stopped: {err}", file=sys.stderr)
        return 3
    finally:
        teardown_distributed()
    if env.is_main:
        print(f"done: {result.global_step} steps; last checkpoint {result.last_checkpoint}"
              + (f"; best {result.best['metric']} {result.best['score']:.4f} at {result.best['checkpoint']}"
                 if result.best else ""))
    return 0
