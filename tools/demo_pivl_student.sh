#!/usr/bin/env bash
# π-VL Table 5 on the embedded default (CPU, offline): a light timm student trained in stage 2 by the prompts the
# tiny CLIP teacher learned in stage 1 - no teacher (ID + triplet only), CLIP-ReID's identity prompts, π-VL's
# part-informed prompts (with the alignment head on the student's last map) - side by side. The student is
# mobilenetv2_035 (timm's nearest to the paper's MobileNetV2 x0.25) from RANDOM weights: ImageNet weights cannot be
# downloaded here. Reuses the tiny CLIP of tools/demo_pivl.sh (pretrained first if missing). Extra arguments go to
# every run; SEEDS="0 1 2" trains each row once per seed and prints mean (min-max). Replaces earlier runs of it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1
seeds=(${SEEDS:-42})
student=(--student_model "${STUDENT:-mobilenetv2_035}" --student_pretrained false)
.venv/bin/python examples/pretrain_tiny_clip.py --output_dir outputs/tiny_clip
declare -A rows=(
    [none]="--pivl_ablation B --stage1_epochs 0 --i2t_loss_weight 0"  # the student alone: ID + triplet
    [CLIP-ReID]="--pivl_ablation B"
    [π-VL]="--pivl_ablation B+P+F"
)
runs=()
for row in none CLIP-ReID π-VL; do
    folders=()
    for seed in "${seeds[@]}"; do
        echo "== Table 5 row $row, seed $seed"
        out="outputs/synthetic_pivl_student/$row"
        [ "${#seeds[@]}" -gt 1 ] && out="$out/seed$seed"
        # shellcheck disable=SC2086  # the row's flags are words
        .venv/bin/accelerate launch -q --cpu --num_processes 1 --num_machines 1 --num_cpu_threads_per_process 2 \
            --mixed_precision no --dynamo_backend no \
            examples/train.py --config examples/configs/synthetic_pivl.yaml ${rows[$row]} "${student[@]}" \
            --seed "$seed" --output_dir "$out" --overwrite_output_dir "$@"
        folders+=("$out")
    done
    runs+=("$row=$(IFS=,; echo "${folders[*]}")")
done
echo "π-VL Table 5 rows on SYNTHETIC data (teacher: tiny CLIP; student: ${STUDENT:-mobilenetv2_035}, random init):"
.venv/bin/python examples/report_runs.py "${runs[@]}"
