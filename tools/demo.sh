#!/usr/bin/env bash
# Set up (tools/setup.sh) and run the main job on the embedded default: generate a SYNTHETIC re-ID dataset, train a
# tiny AAformer on it on CPU with `accelerate launch` (a few minutes), evaluate (CMC/mAP/mINP table), then draw the
# trained model's [PART] assignment of a query image. Extra arguments go to examples/train.py (e.g. --epochs 5).
# Each run replaces the previous demo run's outputs in outputs/synthetic (--overwrite_output_dir; it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1
# -q: a failing run shows its own error message, not accelerate's CalledProcessError traceback
.venv/bin/accelerate launch -q --cpu --num_processes 1 --num_machines 1 --num_cpu_threads_per_process 2 \
    --mixed_precision no --dynamo_backend no \
    examples/train.py --config examples/configs/synthetic.yaml --overwrite_output_dir "$@"
query=$(ls data/synthetic_market/query/*.jpg | head -n 1)
.venv/bin/python -m aaformer_hf.apps.demo --model_dir outputs/synthetic/model --image "$query" --output_dir outputs/synthetic
