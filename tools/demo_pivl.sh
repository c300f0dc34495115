#!/usr/bin/env bash
# The π-VL / CLIP-ReID demo on the embedded default (CPU, offline): set up (tools/setup.sh), pretrain a tiny CLIP on
# SYNTHETIC captioned images (examples/pretrain_tiny_clip.py; reused once done), then train a table's rows of the
# π-VL paper from it on a SYNTHETIC re-ID set with parsing maps, and print them side by side:
#   TABLE=3 (default): B (CLIP-ReID), B+H, B+P, B+P+F;
#   TABLE=5: a timm student (STUDENT, default mobilenetv2_035, timm's nearest to the paper's MobileNetV2 x0.25) from
#            RANDOM weights (ImageNet weights cannot be downloaded here) taught by no teacher (ID + triplet only),
#            by CLIP-ReID's identity prompts, or by π-VL's part-informed prompts.
# SEEDS="0 1 2" trains every row once per seed (same tiny CLIP) and prints mean (min-max). BACKBONE=cnn: π-VL's CNN
# (a tiny CLIP ResNet, examples/configs/synthetic_pivl_cnn.yaml) instead of the ViT. Extra arguments go to every
# examples/train.py run (e.g. --epochs 4). Replaces earlier runs of the same table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export HF_HUB_OFFLINE=1
seeds=(${SEEDS:-42})
table=${TABLE:-3}
case "${BACKBONE:-vit}" in
    vit) config=examples/configs/synthetic_pivl.yaml; clip=outputs/tiny_clip; image_model=pivl_vit_tiny; suffix= ;;
    cnn) config=examples/configs/synthetic_pivl_cnn.yaml; clip=outputs/tiny_clip_cnn; image_model=pivl_resnet_tiny
         suffix=_cnn ;;
    *) echo "BACKBONE must be vit or cnn, got $BACKBONE" >&2; exit 2 ;;
esac
declare -A rows
if [ "$table" = 3 ]; then
    names=(B B+H B+P B+P+F)
    for row in "${names[@]}"; do rows[$row]="--pivl_ablation $row"; done
    outputs=outputs/synthetic_pivl$suffix
elif [ "$table" = 5 ]; then
    names=(none CLIP-ReID π-VL)
    # a randomly initialised CNN needs a larger learning rate and more epochs than the tiny CLIP tower's schedule
    student="--student_model ${STUDENT:-mobilenetv2_035} --student_pretrained false --lr 0.003 --warmup_lr 0.0003
             --epochs 30 --lr_decay_epochs [20,27] --eval_every 30"
    rows=([none]="--pivl_ablation B --stage1_epochs 0 --i2t_loss_weight 0 $student"
          [CLIP-ReID]="--pivl_ablation B $student" [π-VL]="--pivl_ablation B+P+F $student")
    outputs=outputs/synthetic_pivl_student$suffix
else
    echo "TABLE must be 3 or 5, got $table" >&2; exit 2
fi
.venv/bin/python examples/pretrain_tiny_clip.py --output_dir "$clip" --image_model "$image_model"
runs=()
for row in "${names[@]}"; do
    folders=()
    for seed in "${seeds[@]}"; do
        echo "== Table $table row $row, seed $seed"
        out="$outputs/$row"
        [ "${#seeds[@]}" -gt 1 ] && out="$out/seed$seed"
        # shellcheck disable=SC2086  # the row's flags are words
        .venv/bin/accelerate launch -q --cpu --num_processes 1 --num_machines 1 --num_cpu_threads_per_process 2 \
            --mixed_precision no --dynamo_backend no \
            examples/train.py --config "$config" ${rows[$row]} --seed "$seed" \
            --output_dir "$out" --overwrite_output_dir "$@"
        folders+=("$out")
    done
    runs+=("$row=$(IFS=,; echo "${folders[*]}")")
done
echo "π-VL Table $table rows, ${BACKBONE:-vit} backbone, on SYNTHETIC data (tiny CLIP pretrained on synthetic captions;" \
    "says nothing about real re-ID):"
.venv/bin/python examples/report_runs.py "${runs[@]}"
