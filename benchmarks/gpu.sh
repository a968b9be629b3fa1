#!/usr/bin/env bash
# The GPU half of the speed benchmarks, in one run of about 8 minutes on one GPU:
#   1. decoding in bf16 at batch 1 and 8 (benchmarks/decode.py, paper text transformer, 115 tokens);
#   2. the paper training step in bf16 at batch 2, with and without activation checkpointing, with peak memory
#      (benchmarks/train_step.py);
#   3. the training loader's feeding rate (benchmarks/loader.py, paper sizes, batch 2) against the step rate of 2;
#   4. one paper-size caption end to end in bf16, model load included (benchmarks/caption_e2e.py).
# Each part prints its benchmark's JSON last line as one line {"part": ..., "result": ...}; a part that fails or
# runs past its time limit prints {"part": ..., "error": ...} and the others still run. The last line is a
# summary: the card, and whether the loader keeps up with the training step.
#
#   bash benchmarks/gpu.sh            # PYTHON=... to use another interpreter than .venv/bin/python
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOGS=$(mktemp -d)

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: error: no CUDA device visible to $PYTHON (this script measures the GPU half only)" >&2
    exit 2
fi

part() {  # part NAME SECONDS SCRIPT ARGS...: run one benchmark, print its last JSON line wrapped
    local name=$1 limit=$2
    shift 2
    local rc=0
    timeout "$limit" "$PYTHON" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" || rc=$?
    if [ "$rc" -eq 0 ]; then
        local last
        last=$(tail -n 1 "$LOGS/$name.out")
        if "$PYTHON" -c 'import json, sys; json.loads(sys.argv[1])' "$last" 2>/dev/null; then
            echo "{\"part\": \"$name\", \"result\": $last}"
            echo "$last" >"$LOGS/$name.json"
        else
            echo "{\"part\": \"$name\", \"error\": \"its last line is not JSON\"}"
        fi
    else
        local why
        why=$(tail -n 1 "$LOGS/$name.err" | tr -d '"\\')
        echo "{\"part\": \"$name\", \"error\": \"exit $rc (limit ${limit} s): ${why}\"}"
    fi
}

part decode 120 benchmarks/decode.py --devices cuda --lengths 115 --batch 8 --reforward-steps 3
part train_step 210 benchmarks/train_step.py --devices cuda --batch 2 --checkpointing off,on
part loader 60 benchmarks/loader.py --workers 2 8 --rounds 2
part caption_e2e 60 benchmarks/caption_e2e.py --devices cuda --repeats 1

"$PYTHON" - "$LOGS" <<'EOF'
import json, sys
from pathlib import Path

import torch

logs = Path(sys.argv[1])
def read(name):
    path = logs / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None

summary = {"benchmark": "gpu", "card": torch.cuda.get_device_name(0),
           "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
           "torch": torch.__version__, "parts_done": [n for n in ("decode", "train_step", "loader", "caption_e2e") if read(n)]}
step, loader = read("train_step"), read("loader")
if step and loader:
    steps = [r for r in step.get("results", []) if "seconds_per_step" in r]
    fastest = min(steps, key=lambda r: r["seconds_per_step"]) if steps else None
    feeding = max((v["ours_samples_per_s"] for k, v in loader.items() if k.startswith("workers_")), default=None)
    if fastest and feeding:
        needed = 2 / fastest["seconds_per_step"]  # batch 2
        summary.update(step_samples_per_s=round(needed, 2), loader_samples_per_s=feeding,
                       loader_keeps_up=feeding >= needed)
print(json.dumps(summary))
EOF
