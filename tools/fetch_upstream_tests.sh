#!/usr/bin/env bash
# Unpack the test suites of the *installed* timm and transformers from their PyPI source distributions into
# .upstream/ (tests/test_timm_conformance.py and tests/test_hf_common.py run them against our models).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .upstream
for pkg in timm transformers; do
  ver=$("$PY" -c "import $pkg; print($pkg.__version__)")
  if [ ! -d ".upstream/$pkg-$ver/tests" ]; then
    "$PY" -m pip download -q --no-deps --no-binary :all: "$pkg==$ver" -d .upstream
    tar xzf ".upstream/$pkg-$ver.tar.gz" -C .upstream "$pkg-$ver/tests"
  fi
done
