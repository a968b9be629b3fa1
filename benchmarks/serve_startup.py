"""`avlformer serve` from its start to its first 200 (``GET /api/videos``), and from a SIGTERM to its exit.

A tiny random checkpoint is saved once; each run starts ``python -m avlformer.cli serve --model CKPT --port 0``
in a new process (imports, model load, binding: all that a user waits for), polls until the first 200, then
stops it with SIGTERM. ``--src`` chooses the source tree the server runs from, so two versions of the server can
be timed by the same script on the same machine.

Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_checkpoint(folder: Path) -> Path:
    sys.path.insert(0, str(SRC))
    import torch

    from avlformer.data.recipe import PreprocessRecipe
    from avlformer.hub import AVLFormer
    from avlformer.modeling.avlformer import AVLFormerConfig

    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    model = AVLFormer(config)
    model.recipe = PreprocessRecipe(stored_frames=8, short_side=64)
    model.save_pretrained(folder)
    return folder


def one_run(checkpoint: Path, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "avlformer.cli", "serve", "--model", str(checkpoint),
                                "--port", "0", "--device", "cpu"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        match = re.search(r"(http://\S+?/)", process.stdout.readline())
        if not match:
            raise SystemExit("the server did not start")
        while True:
            try:
                with urllib.request.urlopen(match.group(1) + "api/videos", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.01)
        ready = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        return {"first_200_s": ready - start, "stop_s": time.monotonic() - ready, "exit_code": process.returncode}
    finally:
        if process.poll() is None:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--src", type=Path, default=SRC, help="the src/ folder the server runs from")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = tiny_checkpoint(Path(folder) / "ckpt")
        runs = [one_run(checkpoint, args.src.resolve()) for _ in range(args.runs)]
    for run in runs:
        print(f"first 200 after {run['first_200_s']:.2f} s, stopped {run['stop_s']:.2f} s after SIGTERM "
              f"(exit {run['exit_code']})")
    print(json.dumps({"benchmark": "serve_startup", "src": str(args.src), "runs": runs,
                      "first_200_median_s": statistics.median(r["first_200_s"] for r in runs),
                      "stop_median_s": statistics.median(r["stop_s"] for r in runs)}))


if __name__ == "__main__":
    main()
