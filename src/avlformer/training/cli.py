"""`avlformer train`: run.sh's target. One process by default; under torchrun, one process per device.

A user's mistake (a flag, a config value, a damaged checkpoint) ends in one line and exit status 2; a NaN stop in
exit 3; Ctrl-C in one line with the --resume that continues, exit 130 (the shell's code for SIGINT).
"""

from __future__ import annotations

import argparse
import os
import sys

from avlformer.training import args as train_args
from avlformer.training.checkpointing import ResumeError
from avlformer.training.distributed import init_distributed, teardown_distributed
from avlformer.training.loop import NonFiniteLossError, TrainingInterrupted, train

INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_args.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        config = train_args.resolve_args(args, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except train_args.ArgumentError as err:
        print(f"avlformer train: error: {err}", file=sys.stderr)
        return 2
    env = init_distributed(config.run.device, config.run.local_rank)
    try:
        result = train(config, env)
    except (train_args.ArgumentError, ResumeError, FileNotFoundError) as err:
        print(f"avlformer train: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"avlformer train: stopped: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        if env.is_main:
            print(f"avlformer train: {err}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        if env.is_main:
            print("avlformer train: interrupted before training started; nothing was written", file=sys.stderr)
        return INTERRUPTED
    finally:
        teardown_distributed()
    if env.is_main:
        print(f"done: {result.global_step} steps; last checkpoint {result.last_checkpoint}"
              + (f"; best {result.best['metric']} {result.best['score']:.4f} at {result.best['checkpoint']}"
                 if result.best else ""))
    return 0
