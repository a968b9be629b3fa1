"""`avlformer train`: run.sh's target. One process by default; under torchrun, one process per device. Errors
end in one line with the exit statuses of docs/training.md (Failures): 2 bad input, 1 save failed, 3 NaN,
130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys

from avlformer.error_text import one_line
from avlformer.training import args as train_args
from avlformer.training.checkpointing import NO_SPACE_ERRNOS, CheckpointSaveError
from avlformer.training.distributed import init_distributed, teardown_distributed
from avlformer.training.loop import NonFiniteLossError, TrainingInterrupted, train

INTERRUPTED = 130
add_arguments = train_args.add_arguments  # the command's flags are the training flags


def main(args: argparse.Namespace) -> int:
    try:
        config = train_args.resolve_args(args, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except train_args.ArgumentError as err:
        print(f"avlformer train: error: {err}", file=sys.stderr)
        return 2
    env = init_distributed(config.run.device, config.run.local_rank)
    try:
        result = train(config, env)
    except (ValueError, FileNotFoundError) as err:  # flags, config, data and weight files: named in the message
        print(f"avlformer train: error: {one_line(err)}", file=sys.stderr)
        return 2
    except CheckpointSaveError as err:
        if env.is_main:
            print(f"avlformer train: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in NO_SPACE_ERRNOS:
            raise
        # Another output (the best checkpoint, validation predictions, a log) met the full disk.
        print(f"avlformer train: error: no space left on the device ({err.filename or config.run.output_dir}); "
              f"free some space and rerun with --resume auto", file=sys.stderr)
        return 1
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
