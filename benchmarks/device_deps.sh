#!/usr/bin/env bash
# Pure-Python packages the device image lacks, copied from this machine's .venv into build/device_deps (git-ignored).
# The image holds torch, transformers, accelerate, safetensors, tokenizers, tensorboard, matplotlib, pyyaml and tqdm
# but not omegaconf (2026-11-28, H200: `ModuleNotFoundError: No module named 'omegaconf'`). Run this here, then
# pass carry=["build/device_deps"] to every device call; benchmarks/device_session.sh puts it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
site=$("$PY" -c 'import omegaconf, os; print(os.path.dirname(os.path.dirname(omegaconf.__file__)))')
rm -rf build/device_deps && mkdir -p build/device_deps
cp -r "$site/omegaconf" build/device_deps/  # omegaconf 2.4 vendors its antlr runtime; its only other dependency is pyyaml
find build/device_deps -name __pycache__ -prune -exec rm -rf {} +
echo "build/device_deps: $(ls build/device_deps | tr '\n' ' ')($(du -sh build/device_deps | cut -f1))"
