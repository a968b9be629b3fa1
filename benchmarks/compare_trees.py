"""One benchmark run side by side in two source trees (say, a ``git worktree`` of an older commit and this one).

Each run is the tree's own copy of the benchmark script, in its own process with that tree's ``src`` first on
``PYTHONPATH``; runs alternate A B A B so both see the same machine load. ``--metric`` names a number in the
benchmark's last JSON line by its dotted path (``results.0.by_threads.1.lengths.115.cached_step_ms``, ``decode_s``);
the medians and their ratio B / A come out as the last JSON line.

    python benchmarks/compare_trees.py --a /tmp/old_main --b . --rounds 3 --metric decode_s \\
        -- benchmarks/caption_e2e.py --threads 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, type=Path, help="the first tree (the baseline)")
    parser.add_argument("--b", required=True, type=Path, help="the second tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metric", action="append", required=True, help="dotted path in the last JSON line")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the benchmark script (relative to each tree) and its arguments")
    args = parser.parse_args(argv)
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.command or args.rounds < 1:
        parser.error("give the benchmark after --, and rounds >= 1")
    return args


def lookup(result: dict, path: str):
    value = result
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def run(tree: Path, command: list[str]) -> dict:
    tree = tree.resolve()
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    script, *rest = command
    done = subprocess.run([sys.executable, str(tree / script), *rest], cwd=tree, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{tree}: {script} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    values: dict[str, dict[str, list]] = {"a": {m: [] for m in args.metric}, "b": {m: [] for m in args.metric}}
    for round_index in range(args.rounds):
        for side in ("a", "b"):
            result = run(getattr(args, side), args.command)
            for metric in args.metric:
                values[side][metric].append(lookup(result, metric))
            print(json.dumps({"round": round_index, "tree": side, **{m: values[side][m][-1] for m in args.metric}}),
                  flush=True)
    summary = {"benchmark": "compare_trees", "command": args.command, "rounds": args.rounds,
               "a": str(args.a), "b": str(args.b), "load_average": round(os.getloadavg()[0], 2), "metrics": {}}
    for metric in args.metric:
        a, b = statistics.median(values["a"][metric]), statistics.median(values["b"][metric])
        summary["metrics"][metric] = {"a": values["a"][metric], "b": values["b"][metric], "a_median": a,
                                      "b_median": b, "b_over_a": round(b / a, 3)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
