#!/usr/bin/env bash
# ATP SFT steps at the paper's batch size with 20 latent slots, and one GRPO step (16 questions x 8 samples),
# on a randomly initialised LLaMA-3.2-1B-shaped model in bf16. `--cpu` runs a small shape (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" benchmarks/gpu_smoke.py "$@"
