#!/usr/bin/env bash
# The lower bounds pyproject.toml declares, tested on what a user installs: a built wheel (not the source tree).
#   1. build the wheel; 2. a fresh .venv-lowest with every declared lower bound pinned (tools/lowest_constraints.py)
#   and the wheel installed (not editable); 3. the installed package works as a user meets it: the aaformer-hf
#   command, the card templates, registration with timm and transformers; 4. the front-door tests (timm,
#   transformers, Hub, pipeline, processor, round trips, export, CLI, web app, the C [PART] rows built from the
#   installed source) against it, from a copy of tests/ outside the source tree so that `import aaformer_hf` can
#   only find the wheel.
# CI runs it after tools/test.sh (the newest releases). Downloads torch's lowest supported release from PyPI (about
# 8 GB installed, removed again when the tests pass).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=.venv-lowest
rm -rf "$VENV" dist build
python3 -m venv "$VENV"
PY=$ROOT/$VENV/bin/python
"$PY" -m pip install -q --upgrade pip
python3 tools/lowest_constraints.py > "$VENV/lowest.txt"
echo "lowest versions: $(tr '\n' ' ' < "$VENV/lowest.txt")"
"$PY" -m pip wheel -q --no-deps -w dist .
wheel=$(ls dist/aaformer_hf-*.whl)
# torch first (its CUDA dependencies are most of the download), then the wheel with everything pinned low
"$PY" -m pip install -q -c "$VENV/lowest.txt" torch torchvision
"$PY" -m pip install -q -c "$VENV/lowest.txt" "${wheel}[dev]"

# the installed package as a user meets it (run outside the source tree)
cd "$(mktemp -d)"
"$ROOT/$VENV/bin/aaformer-hf" --help > /dev/null
"$PY" - <<'EOF'
import importlib.metadata
import sys
from importlib import resources
from pathlib import Path

import aaformer_hf
location = Path(aaformer_hf.__file__).resolve()
assert 'site-packages' in location.parts, f'aaformer_hf imported from {location}, not the installed wheel'
assert resources.files('aaformer_hf.hub').joinpath('templates/model_card.md').read_text().strip(), 'card template missing'
import timm
from transformers import AutoConfig, AutoModel
assert 'aaformer_base' in timm.list_models('aaformer*') and 'pivl_vit_base_patch16' in timm.list_models('pivl*')
model = AutoModel.from_config(AutoConfig.for_model('aaformer', num_hidden_layers=1, hidden_size=64,
                                                   num_attention_heads=2, intermediate_size=128))
assert type(model).__name__ == 'AAformerModel'
versions = {name: importlib.metadata.version(name) for name in ('torch', 'timm', 'transformers', 'huggingface_hub',
                                                                 'accelerate', 'datasets', 'safetensors', 'numpy')}
print(f'wheel installed at {location.parent}; {versions}')
EOF

# the front-door tests against the installed wheel
WORK=$(mktemp -d)
cp -r "$ROOT/tests" "$ROOT/examples" "$ROOT/model_cards" "$ROOT/pyproject.toml" "$WORK/"
cd "$ROOT"
PYTHON="$PY" bash tools/fetch_upstream_tests.sh
ln -s "$ROOT/.upstream" "$WORK/.upstream"
cd "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$ROOT/$VENV/bin/pytest" -q \
  tests/test_timm_api.py tests/test_timm_conformance.py tests/test_hf_common.py tests/test_hub.py \
  tests/test_roundtrip.py tests/test_preprocessing.py tests/test_export.py tests/test_convert_clipreid.py \
  tests/test_bad_weights_and_config.py tests/test_cli.py tests/test_cli_hardening.py tests/test_lazy_import.py \
  tests/test_search.py tests/test_families.py tests/test_app.py tests/test_cpu_part_rows.py "$@"
# passed: give the disk back (the environment is rebuilt from scratch every run; a failed run keeps it to look into)
cd "$ROOT"
rm -rf "$VENV" dist build "$WORK"
