#!/usr/bin/env bash
# The π-VL / CLIP-ReID demo on the embedded default (CPU, offline): set up (tools/setup.sh), pretrain a tiny CLIP on
# SYNTHETIC captioned images (examples/pretrain_tiny_clip.py; reused once done), then train Table 3's four rows of the
# π-VL paper from it - B (CLIP-ReID), B+H, B+P, B+P+F - on a SYNTHETIC re-ID set with parsing maps, and print them
# side by side. Extra arguments go to every examples/train.py run (e.g. --epochs 4). Replaces earlier demo runs.
# SEEDS="0 1 2" bash tools/demo_pivl.sh trains every row once per seed (same tiny CLIP) and prints mean (min-max).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1
seeds=(${SEEDS:-42})
.venv/bin/python examples/pretrain_tiny_clip.py --output_dir outputs/tiny_clip
runs=()
for row in B B+H B+P B+P+F; do
    folders=()
    for seed in "${seeds[@]}"; do
        echo "== Table 3 row $row, seed $seed"
        out="outputs/synthetic_pivl/$row"
        [ "${#seeds[@]}" -gt 1 ] && out="$out/seed$seed"
        .venv/bin/accelerate launch -q --cpu --num_processes 1 --num_machines 1 --num_cpu_threads_per_process 2 \
            --mixed_precision no --dynamo_backend no \
            examples/train.py --config examples/configs/synthetic_pivl.yaml --pivl_ablation "$row" --seed "$seed" \
            --output_dir "$out" --overwrite_output_dir "$@"
        folders+=("$out")
    done
    runs+=("$row=$(IFS=,; echo "${folders[*]}")")
done
echo "π-VL Table 3 rows on SYNTHETIC data (tiny CLIP pretrained on synthetic captions; says nothing about real re-ID):"
.venv/bin/python examples/report_runs.py "${runs[@]}"
