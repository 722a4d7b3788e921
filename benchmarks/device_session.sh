#!/usr/bin/env bash
# What a session lent a GPU runs through the `device` tool: two calls, each under 10 minutes, so that both fit the
# 15 minutes of device time a session gets (a machine's start takes 1-2 of them).
#
#   bash benchmarks/device_session.sh smoke   # benchmarks/gpu_smoke.sh: the paper recipe at 1B shape -> $OUT/SMOKE.md
#   bash benchmarks/device_session.sh suite   # benchmarks/gpu_bench.sh: bench --suite gpu -> $OUT/RESULTS.md, ...
#
# Extra arguments go to gpu_smoke.sh / gpu_bench.sh (the tests run both on CPU: `smoke --cpu`, `suite --set ...`).
# If the smoke call leaves less device time than the suite needs (about 7.5 minutes, plus 1 while the machine is
# warm), shorten every job, safety stops included: `suite --scale F` with F = (minutes left - 3) / 6 (evaluation,
# about 1.5 minutes, does not shrink; that was measured before the 500 held-out problems RL is judged on, whose
# 3 x 500 greedy answers add a tenth of the test splits' 7 x 2,000; keep them: with `--val-large 0` RL against its
# start is not judged). A warm machine keeps /tmp: a second suite call resumes the first one's runs
# (and refuses changed settings), so give a retry its own folder: GPU_BENCH_OUT=/tmp/gpu-suite-2. A suite cut
# off by the lease leaves no RESULTS.md; a scaled one does, and its command line in RESULTS.md names the scale.
# Give the suite the device call's timeout_s as DEADLINE_S=<seconds> (env) and it stops itself 30 s before it, so that
# a suite the call would cut off still brings back runs.tar.gz: every run's config, metrics and cached evaluations.
# The device image has no .venv and no network but holds torch, transformers, accelerate, safetensors, tokenizers,
# tensorboard, matplotlib, pyyaml and tqdm, so the package runs from src/ with the image's python3; omegaconf it lacks:
# run `bash benchmarks/device_deps.sh` here first and pass carry=["build/device_deps"] to each device call. The files that
# come back (at most 8, 2 folders down) are the summaries and runs.tar.gz, not the run directories: copy them into results/gpu/
# and commit them, naming the card (gpu.csv).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
# build/device_deps: what benchmarks/device_deps.sh copied here for the image (omegaconf), carried by the device call.
export PYTHONPATH="$PWD/src:$PWD/build/device_deps${PYTHONPATH:+:$PYTHONPATH}" PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import omegaconf' 2> /dev/null; then
  echo "error: omegaconf is not importable here: run 'bash benchmarks/device_deps.sh' on the dev machine and pass" \
    "carry=[\"build/device_deps\"] to the device call" >&2
  exit 2
fi
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv"
fi
"$PYTHON" -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "transformers",
transformers.__version__, "accelerate", accelerate.__version__, "cuda", torch.cuda.is_available())'
case "${1:-}" in
  smoke)
    bash benchmarks/gpu_smoke.sh "${@:2}" --out "$OUT" 2>&1 | tee "$OUT/smoke.log"
    status=$? ;;
  suite)
    work="${GPU_BENCH_OUT:-/tmp/gpu-suite}"
    limit=()
    if [ -n "${DEADLINE_S:-}" ]; then
      # The suite stops itself 30 s before the device call's own limit (timeout_s), so that what it trained and
      # evaluated so far is packed below and comes back: a call killed by the tool runs nothing after the kill.
      if [ "$DEADLINE_S" -le 40 ] 2> /dev/null || ! [ "$DEADLINE_S" -eq "$DEADLINE_S" ] 2> /dev/null; then
        echo "error: DEADLINE_S must be a number of seconds above 40 (the device call's timeout_s), got '$DEADLINE_S'" >&2
        exit 2
      fi
      limit=(timeout --kill-after=10 "$((DEADLINE_S - 30))")
    fi
    GPU_BENCH_OUT="$work" ${limit[@]+"${limit[@]}"} bash benchmarks/gpu_bench.sh "${@:2}" 2>&1 | tee "$OUT/bench.log"
    status=$?
    [ "$status" -eq 124 ] && echo "the suite was stopped at DEADLINE_S - 30 s; runs.tar.gz holds what it finished" \
      | tee -a "$OUT/bench.log"
    for f in RESULTS.md results.json accuracy_vs_tokens.png training_curves.png latents_used.png; do
      [ -f "$work/$f" ] && cp "$work/$f" "$OUT/"
    done
    # Every run's small files (config, environment, metrics, cached test/val evaluations) and training logs, in one
    # file: the curves and per-split figures of a suite that did not get as far as RESULTS.md.
    (cd "$work" 2> /dev/null && find . -maxdepth 4 -type f \( -path './seed-*/logs/*.log' -o -path './seed-*/runs/*/*' \
      \( -name config.yaml -o -name environment.json -o -name metrics.jsonl -o -name '*_eval.json' \) \) -print0 \
      | tar -czf "$OUT/runs.tar.gz" --null -T -) ;;
  *)
    echo "usage: $0 smoke|suite [arguments for gpu_smoke.sh | gpu_bench.sh]" >&2
    exit 2 ;;
esac
exit "$status"
