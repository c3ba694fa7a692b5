#!/usr/bin/env bash
# One command: install everything, then run the main job on the embedded sample data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/medkd pipeline --data napari_medkd/sample_data/hippocampus --out medkd_out --overwrite "$@"
