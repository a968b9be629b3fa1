#!/usr/bin/env bash
# Train AVLFormer. One process by default; torchrun when NPROC_PER_NODE > 1 or NNODES > 1.
#
#   bash run.sh                                   # the paper recipe (configs/favd_32frm_default.json), one process
#   NPROC_PER_NODE=8 bash run.sh                  # one node, 8 GPUs (DDP over NCCL; gloo on CPU)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 MASTER_PORT=29500 NPROC_PER_NODE=8 bash run.sh   # on each node
#   bash run.sh --config configs/demo_tiny.json --num_train_epochs 2      # any flag of `avlformer train --help`
#
# Flags after run.sh are passed on; a --config given there replaces the default one. PYTHON picks the interpreter.
# Paths typed on the command line are taken from the current folder, wherever run.sh lives (the default config's
# own paths are taken from its folder).
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"

PYTHON="${PYTHON:-$( [ -x "$repo/.venv/bin/python" ] && echo "$repo/.venv/bin/python" || echo python )}"
NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"

config=(--config "$repo/configs/favd_32frm_default.json")
for arg in "$@"; do
  case "$arg" in --config|--config=*) config=() ;; esac
done

if [ "$NPROC_PER_NODE" -gt 1 ] || [ "$NNODES" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC_PER_NODE" --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    -m avlformer.cli train "${config[@]}" "$@"
fi
exec "$PYTHON" -m avlformer.cli train "${config[@]}" "$@"
