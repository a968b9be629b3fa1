#!/usr/bin/env bash
# Sets up everything AVLFormer needs on this machine; safe to run again (it only does what is missing).
#   - system tools: ffmpeg (upstream-method benchmark, optional CLI use), Java (COCO caption metrics),
#     Chromium (the demo report's and the captioning page's browser tests)
#   - .venv with the pinned Python dependencies (requirements.txt: the base package and every extra, [train],
#     [eval] and [serve], plus the test tools) and this package in editable mode
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.setup-stamp"

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[recommend_env] installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "[recommend_env] missing system packages: ${need_apt[*]}"
    echo "[recommend_env] install them with: sudo apt-get install -y ${need_apt[*]}"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[recommend_env] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "[recommend_env] installing Python dependencies into $VENV (the first time downloads torch: several GB)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  echo "$want" > "$STAMP"
fi
echo "[recommend_env] ready: activate with 'source $VENV/bin/activate'"
