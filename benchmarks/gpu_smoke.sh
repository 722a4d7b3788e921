#!/usr/bin/env bash
# GPU smoke check of the paper recipe (benchmarks/gpu_smoke.py): 3 ATP SFT epochs and one GRPO step (16 questions
# x 8 rollouts) on a randomly initialised LLaMA-3.2-1B-shaped model, through sft.train / rl.train_rl with the paper
# configs; one `CHECK name PASS|FAIL ...` line per check, exit 1 if any fails. One H100, under 10 minutes.
# `--cpu` runs the same checks at small shapes (what CI runs); `--out DIR` also writes DIR/SMOKE.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" benchmarks/gpu_smoke.py "$@"
