#!/usr/bin/env bash
# Upstream's inference.sh, as a thin wrapper over `avlformer infer` (same flags; extra flags pass through).
# Predictions (COCO format, image_id = video file stem) go to --output (default ./prediction_coco_fmt.json).
set -euo pipefail
cd "$(dirname "$0")"
AVLFORMER="${AVLFORMER:-$( [ -x .venv/bin/avlformer ] && echo .venv/bin/avlformer || echo avlformer )}"
EVAL_MODEL_DIR="${EVAL_MODEL_DIR:-output/favd_default}"
exec "$AVLFORMER" infer \
    --eval_model_dir "$EVAL_MODEL_DIR" \
    --test_video_fname "${TEST_VIDEO_FNAME:-datasets/videos/test}" \
    --test_audio_fname "${TEST_AUDIO_FNAME:-datasets/audio_mp3/test}" \
    --do_lower_case \
    --do_test \
    "$@"
