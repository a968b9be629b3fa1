#!/usr/bin/env bash
# Upstream's inference.sh, as a thin wrapper over `avlformer infer` (same flags; extra flags pass through).
# Predictions (COCO format, image_id = video file stem) go to --output (default ./prediction_coco_fmt.json).
# Paths typed by the caller are taken from the current folder; the defaults below are the repository's folders.
set -euo pipefail
repo="$(cd "$(dirname "$0")" && pwd)"
AVLFORMER="${AVLFORMER:-$( [ -x "$repo/.venv/bin/avlformer" ] && echo "$repo/.venv/bin/avlformer" || echo avlformer )}"
EVAL_MODEL_DIR="${EVAL_MODEL_DIR:-$repo/output/favd_default}"
exec "$AVLFORMER" infer \
    --eval_model_dir "$EVAL_MODEL_DIR" \
    --test_video_fname "${TEST_VIDEO_FNAME:-$repo/datasets/videos/test}" \
    --test_audio_fname "${TEST_AUDIO_FNAME:-$repo/datasets/audio_mp3/test}" \
    --do_lower_case \
    --do_test \
    "$@"
