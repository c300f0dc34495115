#!/usr/bin/env bash
# Set up (tools/setup.sh, Chromium included where it can), fetch timm's and transformers' own test suites, run the
# whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/fetch_upstream_tests.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
# where setup.sh could install Chromium, the browser tests must run: a browser that fails to start fails them
if command -v chromium > /dev/null; then export AAFORMER_HF_REQUIRE_BROWSER=1; fi
.venv/bin/python -m pytest -q "$@"
