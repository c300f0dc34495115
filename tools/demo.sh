#!/usr/bin/env bash
# Set up (tools/setup.sh) and run the main job on the embedded default: a synthetic person image, the tiny model, CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/python -m aaformer_hf.demo "$@"
