#!/usr/bin/env bash
# Issue #13's GPU measurements, in stages that each fit one 10-minute call of the device machine. Here, once:
#     bash tools/gpu_session.sh wheels        # the packages the device image lacks or has too old, into .whl/
# then on the device machine (run with carry [".whl"]; logs go to $OUT/STAGE.log):
#     bash tools/gpu_session.sh tests         # the GPU tests: Triton kernels compiled, evaluation, search
#     bash tools/gpu_session.sh eager         # profile + bench_model eager, plain PyTorch vs the Triton kernels
#     bash tools/gpu_session.sh compiled      # bench_model under torch.compile, then with CUDA graphs
#     bash tools/gpu_session.sh eval          # evaluation and re-ranking at MSMT17 scale, CPU vs GPU
#     bash tools/gpu_session.sh train         # examples/train.py throughput: AAformer-B and the ViT baseline
#     bash tools/gpu_session.sh pivl          # bench_pivl: the π-VL encoder and a stage-2 step against timm's CLIP ViT-B
# Stages can be chained in one call (bash tools/gpu_session.sh tests eager) while they fit its time limit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = wheels ]; then
    # the versions this checkout's .venv was tested with, for the device's Python 3.12
    versions=$(.venv/bin/python -m pip list --format=freeze 2>/dev/null \
        | grep -i -E '^(transformers|timm|datasets|dill|multiprocess|huggingface.hub|tokenizers|parameterized)==')
    rm -rf .whl
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $versions
    du -sh .whl
    exit 0
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT"
PY=python3
BENCH="$PY benchmarks/bench_model.py --device cuda --dtype bf16 --batch 64 --rounds 7"

for stage in "$@"; do
    set -o pipefail
    {
        echo "== $stage: $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
        $PY -c 'import torch, triton, timm, transformers; print("torch", torch.__version__, "triton", triton.__version__,
"timm", timm.__version__, "transformers", transformers.__version__)'
        case $stage in
        tests)
            $PY -m pytest -q -p no:cacheprovider -rs tests/test_triton_assign.py tests/test_triton_part_rows.py \
                tests/test_part_rows.py tests/test_evaluation.py tests/test_search.py -k 'gpu or triton or part_rows'
            ;;
        eager)
            $PY benchmarks/profile_model.py --device cuda --batch 64 --bf16 --train_step
            $PY benchmarks/profile_model.py --device cuda --batch 64 --bf16 --train_step --triton_kernels
            $BENCH --compare_plain_rows --triton_kernels compare
            ;;
        compiled)
            $BENCH --compile --triton_kernels compare
            $BENCH --compile --compile_mode reduce-overhead --triton_kernels compare
            ;;
        eval)
            $PY benchmarks/bench_evaluation.py --no_reference --devices cpu,cuda --dtypes float32
            $PY benchmarks/bench_rerank.py --queries 11659 --gallery 82161 --device cuda
            ;;
        train)
            for model in "--model aaformer_base" "--model aaformer_base --baseline vit"; do
                # shellcheck disable=SC2086
                $PY -m accelerate.commands.launch --num_processes 1 --mixed_precision bf16 --dynamo_backend no \
                    examples/train.py --config examples/configs/synthetic.yaml $model --pretrained false \
                    --dataset_options '{"train_ids": 751, "test_ids": 50}' --data_root /tmp/synthetic_751 \
                    --batch_size 64 --epochs 2 --warmup_epochs 1 --eval_every 100 --num_workers 8 \
                    --checkpointing_steps null \
                    --output_dir "/tmp/train_$(echo "$model" | tr -c 'a-z0-9' _)" --overwrite_output_dir
                $PY -c 'import json, sys; m = json.load(open(sys.argv[1])); print({k: v for k, v in m.items()
if "image" in k or "wait" in k or "second" in k})' "$(ls -td /tmp/train_*/ | head -n 1)metrics.json"
            done
            ;;
        pivl)
            $PY benchmarks/bench_pivl.py --device cuda --dtype bf16 --batch 64
            ;;
        *)
            echo "unknown stage $stage" >&2
            exit 2
            ;;
        esac
    } 2>&1 | tee "$OUT/$stage.log"
done
