#!/usr/bin/env bash
# The GPU suite: `atp-latent bench --suite gpu`, every method on the synthetic benchmark with a llama-medium model
# trained from scratch in bf16 (configs/gpu/), one seed, on one H100/H200: about half an hour on an H200, each job
# to its full schedule (its train.max_minutes is a safety stop above it). RL is judged against its SFT start on 500
# held-out problems. Run gpu/smoke.sh first. docs/gpu.md says more.
#
#   bash gpu/suite.sh [options] [options of atp-latent bench]
#
# Options:
#   --out DIR          the summaries (default results/gpu): RESULTS.md, results.json, the plots, bench.log (all that
#                      was printed), gpu.csv (the card, from nvidia-smi) and runs.tar.gz (every run's config,
#                      environment, metrics, cached evaluations and training log: what a suite stopped before
#                      RESULTS.md leaves)
#   --runs DIR         where the runs and their checkpoints go (default: the --out folder; several GB). Running again
#                      with the same folder resumes the finished and interrupted jobs, and refuses changed settings:
#                      give changed settings a new folder
#   --time-limit T     finish within T (seconds, or 90s, 9m, 1h; above 40 s): the suite is stopped 30 s before T,
#                      so that runs.tar.gz and the summaries are still written; the exit status is then 124
#   --deps DIR         a folder to put on PYTHONPATH (repeatable): packages this machine's Python lacks, as package
#                      folders or pure-Python wheels (bash gpu/deps.sh DIR makes one from a Python that has them)
#   --python PY        the Python to run (default $PYTHON, else .venv/bin/python, else python3); the package runs
#                      from src/, installed or not
#   --cpu              hide any GPU and run on the CPU (the tests, with --set overrides that shrink everything)
#   --check            check the Python environment (packages, CUDA) and stop
#   -h, --help         this text
# Everything else goes to `atp-latent bench --suite gpu --seeds 1`, e.g. --jobs atp_rl,simcot,coconut (a part of
# the suite and the jobs it starts from), --scale 0.5 (every job half as long), --set KEY=VALUE, --val-large N.
#
# Exit status: the suite's (0 when RESULTS.md was written), 124 when --time-limit stopped it, 2 when the environment
# is not ready (one error line says why).
set -uo pipefail
{  # read whole before it runs: an edit of this file during a run does not change the run
source "$(dirname "$0")/lib.sh"
MARGIN=30  # seconds kept after the suite is stopped, for packing its runs

out="$ROOT/results/gpu" runs="" limit="" deps=() cpu=0 check=0 PY=$(default_python) args=()
seconds() {  # seconds 540 | 90s | 9m | 1h
  local n=${1%[smh]}
  [[ "$n" =~ ^[0-9]+$ ]] || return 1
  case "$1" in *m) echo $((n * 60)) ;; *h) echo $((n * 3600)) ;; *) echo "$n" ;; esac
}
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--runs|--time-limit|--deps|--python) [ $# -ge 2 ] || die "$1 needs a value"; set -- "$1=$2" "${@:3}" ;;
    --out=*) out=$(abspath "${1#*=}"); shift ;;
    --runs=*) runs=$(abspath "${1#*=}"); shift ;;
    --time-limit=*)
      limit=$(seconds "${1#*=}") && [ "$limit" -gt $((MARGIN + 10)) ] \
        || die "--time-limit must be above $((MARGIN + 10)) s, in seconds or with s, m or h (540, 9m, 1h); got '${1#*=}'"
      shift ;;
    --deps=*) deps+=("$(abspath "${1#*=}")"); shift ;;
    --python=*) PY=${1#*=}; shift ;;
    --cpu) cpu=1; shift ;;
    --check) check=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
runs=${runs:-$out}
set_pythonpath ${deps[@]+"${deps[@]}"}
[ "$cpu" = 1 ] && export CUDA_VISIBLE_DEVICES=""
env_line=$(check_env "$cpu" torch transformers tokenizers accelerate safetensors yaml omegaconf numpy tqdm matplotlib) \
  || exit 2
if [ "$check" = 1 ]; then echo "$env_line"; exit 0; fi

mkdir -p "$out" "$runs" || die "cannot create $out or $runs"
log="$out/bench.log"
echo "$env_line" | tee "$log"
write_card "$out"
start=$(date +%s)
stop=0  # timeout 0: no limit
if [ -n "$limit" ]; then  # counted from this script's start
  stop=$((limit - MARGIN - SECONDS))
  [ "$stop" -ge 1 ] || stop=1
fi
# timeout runs the suite in its own process group and stops the whole group (the training jobs too) at the limit.
# Being in its own group, the suite does not see the terminal's Ctrl-C: the traps below pass it on.
timeout --kill-after=10 "$stop" bash -c 'set -o pipefail; "${@:2}" 2>&1 | tee -i -a "$1"' _ "$log" \
  "$PY" -m atp_latent.cli bench --suite gpu --seeds 1 --out "$runs" ${args[@]+"${args[@]}"} &
pid=$!
trap 'kill -INT "$pid" 2> /dev/null' INT
trap 'kill -TERM "$pid" 2> /dev/null' TERM HUP
wait "$pid"
status=$?
while kill -0 "$pid" 2> /dev/null; do wait "$pid"; status=$?; done  # a trapped signal ends `wait` early
trap - INT TERM HUP
{
  card=$(sed -n "s/.*, card '\(.*\)'$/\1/p" <<< "$env_line")
  echo "GPU suite wall time: $(($(date +%s) - start)) s on $([ "$card" = none ] && echo cpu || echo "$card")"
  [ "$status" -eq 124 ] && echo "$PROG: stopped $MARGIN s before --time-limit $limit s; runs.tar.gz holds what it finished"
} | tee -a "$log"

if [ "$runs" != "$out" ]; then  # the summaries the suite wrote (RESULTS.md, results.json, plots)
  find "$runs" -maxdepth 1 -type f -exec cp {} "$out/" \;
fi
# Every run's small files (config, environment, metrics, cached test/val evaluations) and training logs, in one
# file: the curves and per-split figures of a suite that did not get as far as RESULTS.md.
(cd "$runs" && find . -maxdepth 4 -type f \( -path './seed-*/logs/*.log' -o -path './seed-*/runs/*/*' \
  \( -name config.yaml -o -name environment.json -o -name metrics.jsonl -o -name '*_eval.json' \) \) -print0 \
  | tar -czf "$out/runs.tar.gz" --null -T -)
echo "$PROG: wrote $out: $(cd "$out" && ls -p | grep -v / | tr '\n' ' ')"
exit "$status"
}
