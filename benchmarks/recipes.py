"""The paper recipe against the causal-LM recipe on the same demo data (`avlformer demo --recipe paper` and
`--recipe causal-lm`, src/avlformer/demo/recipes.py): attribute accuracies (with the audio and silenced), CIDEr,
CPU-seconds to train and seconds per caption.

Each recipe runs as the real command in a child process pinned to 2 cores when the machine has more. The dataset
is generated and prepared once, by the first recipe's run; the second run's work folder links to it. CPU-seconds
are the training stage's (the demo's process and its data-loading worker); seconds per caption are the caption
stage's wall time (loading the checkpoint, decoding each raw video and mp3, captioning it with the audio and again
silenced) over the captions it wrote. Prints one JSON object as the last line.

    python benchmarks/recipes.py [--workdir DIR [--reuse]] [--num-train N --num-test N --epochs N]
                                 [--recipes paper causal-lm]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from demo_proof import accuracy_checks, print_result, run_conditions, run_demo  # benchmarks/ is this script's folder

KEYS = ("visual_accuracy", "sound_accuracy", "silenced_visual_accuracy", "silenced_sound_accuracy", "sound_chance",
        "cider", "bleu4", "train_cpu_seconds", "train_steps")


def run_recipe(recipe: str, workdir: Path, extra: list[str], reuse: bool) -> dict:
    finished = workdir / "metrics.json"
    reused = reuse and finished.is_file()
    if reused:  # a finished run of this recipe in --workdir (runs can take long)
        metrics = json.loads(finished.read_text())
        wall = metrics["wall_seconds"]
    else:
        finished.unlink(missing_ok=True)
        wall = run_demo(workdir, ["--recipe", recipe, *extra])
        metrics = json.loads(finished.read_text())
    result = {key: metrics[key] for key in KEYS}
    captions = 2 * metrics["num_captioned"]  # with the audio, then silenced
    result["seconds_per_caption"] = round(metrics["stage_seconds"]["caption"] / max(1, captions), 4)
    result["train_wall_seconds"] = metrics["stage_seconds"]["train"]
    result["wall_seconds"] = round(wall, 1)  # the demo's own figure when reused (it leaves out start-up)
    result["reused_finished_run"] = reused
    result["parts"] = metrics["parts"]
    result["proof_passed"] = all(accuracy_checks(result).values())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--reuse", action="store_true",
                        help="take a recipe's numbers from its finished run in --workdir instead of rerunning it")
    parser.add_argument("--recipes", nargs="+", default=["paper", "causal-lm"])
    parser.add_argument("--num-train", type=int, default=None, help="reduced mode: training clips")
    parser.add_argument("--num-test", type=int, default=None, help="reduced mode: test clips")
    parser.add_argument("--epochs", type=int, default=None, help="reduced mode: epochs (default: each recipe's)")
    args = parser.parse_args()
    extra = [flag for name in ("num_train", "num_test", "epochs") if getattr(args, name) is not None
             for flag in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="recipes_"))
    load_before = os.getloadavg()
    results, shared_raw = {}, None
    for recipe in args.recipes:
        workdir = root / recipe
        workdir.mkdir(parents=True, exist_ok=True)
        if shared_raw is not None and not (workdir / "raw").exists():
            (workdir / "raw").symlink_to(shared_raw.resolve(), target_is_directory=True)
        results[recipe] = run_recipe(recipe, workdir, extra, args.reuse)
        shared_raw = shared_raw or workdir / "raw"
    load_after = os.getloadavg()
    return print_result({"recipes": results,
                         "conditions": run_conditions(load_before, load_after, root, reduced_flags=extra)}, root, args)


if __name__ == "__main__":
    sys.exit(main())
