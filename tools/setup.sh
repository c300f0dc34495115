#!/usr/bin/env bash
# Create .venv with PyTorch and this package (editable, with the dev extra), and - on Debian, as root - the Chromium
# the web app's browser tests drive. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first, at the versions this workplace serves from local disk; any torch>=2.4 works elsewhere
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || \
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"
# the browser tests' Chromium: Debian's package where this machine can install it; elsewhere those tests skip
if ! command -v chromium > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "installing Debian's chromium for the web app's browser tests"
  (apt-get install -y -q chromium > /dev/null 2>&1 \
    || (apt-get update -q > /dev/null && apt-get install -y -q chromium > /dev/null)) \
    || echo "could not install chromium: the browser tests will skip" >&2
fi
