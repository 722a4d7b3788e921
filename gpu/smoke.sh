#!/usr/bin/env bash
# The GPU check of the paper recipe (gpu/smoke.py): 3 ATP SFT epochs and one GRPO step (16 questions x 8 rollouts)
# on a randomly initialised LLaMA-3.2-1B-shaped model, through the real training entry points with the paper
# configs. One line `CHECK name PASS|FAIL ...` per check, TIME lines (step times, tokens/s, peak memory), then
# SUMMARY. One H100 or H200 (80 GB), under 10 minutes.
#
#   bash gpu/smoke.sh [options] [options of gpu/smoke.py]
#
# Options:
#   --out DIR      write the summary here (default results/gpu): SMOKE.md (device, versions, command, every line),
#                  smoke.log (everything printed, errors included) and gpu.csv (the card, from nvidia-smi)
#   --deps DIR     a folder to put on PYTHONPATH (repeatable): packages this machine's Python lacks, as package
#                  folders or pure-Python wheels (bash gpu/deps.sh DIR makes one from a Python that has them)
#   --python PY    the Python to run (default $PYTHON, else .venv/bin/python, else python3); the package runs
#                  from src/, installed or not
#   --cpu          hide any GPU and run the same checks at small shapes on the CPU, in about a minute (the tests)
#   --lora         check the LoRA recipes (CODI, CoLaR, CoLaR-RL) instead of ATP's; needs peft
#   --check        check the Python environment (packages, CUDA) and stop
#   -h, --help     this text and gpu/smoke.py's own options (--workdir, --preset, --batch-size, ...)
#
# Exit status: 0 every check passed, 1 a check failed, 2 the environment is not ready (one error line says why).
set -uo pipefail
{  # read whole before it runs: an edit of this file during a run does not change the run
source "$(dirname "$0")/lib.sh"

out="$ROOT/results/gpu" deps=() cpu=0 check=0 lora=0 PY=$(default_python) args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$(abspath "$2"); shift 2 ;;
    --out=*) out=$(abspath "${1#*=}"); shift ;;
    --deps) [ $# -ge 2 ] || die "--deps needs a folder"; deps+=("$(abspath "$2")"); shift 2 ;;
    --deps=*) deps+=("$(abspath "${1#*=}")"); shift ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PY=$2; shift 2 ;;
    --python=*) PY=${1#*=}; shift ;;
    --cpu) cpu=1; args+=(--cpu); shift ;;
    --lora) lora=1; args+=(--lora); shift ;;
    --check) check=1; shift ;;
    -h|--help) usage; echo; echo "Options of gpu/smoke.py:"; PYTHONPATH="$ROOT/src" "$PY" "$GPU_DIR/smoke.py" --help; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
set_pythonpath ${deps[@]+"${deps[@]}"}
[ "$cpu" = 1 ] && export CUDA_VISIBLE_DEVICES=""
modules=(torch transformers tokenizers accelerate safetensors yaml omegaconf numpy tqdm)
[ "$lora" = 1 ] && modules+=(peft)
env_line=$(check_env "$cpu" "${modules[@]}") || exit 2
if [ "$check" = 1 ]; then echo "$env_line"; exit 0; fi

mkdir -p "$out" || die "--out $out: cannot create the folder"
write_card "$out"
{ echo "$env_line"; "$PY" "$GPU_DIR/smoke.py" ${args[@]+"${args[@]}"} --out "$out"; } 2>&1 | tee "$out/smoke.log"
exit "${PIPESTATUS[0]}"
}
