#!/usr/bin/env bash
# Upstream-compatible preprocessing (run from the repository root, data in datasets/): raw videos + audio_mp3 +
# captions -> frame_tsv/, audio_hdf/ and metadata/. A thin wrapper over `avlformer prepare`; extra arguments are
# passed through, e.g. `bash data_prepro/run.sh --splits train val --workers 8`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${ROOT}/src${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON:-python}" -m avlformer.cli prepare --data-dir datasets "$@"
