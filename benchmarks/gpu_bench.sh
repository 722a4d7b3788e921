#!/usr/bin/env bash
# The GPU suite: `atp-latent bench --suite gpu` (7 methods on the synthetic benchmark, a llama-medium model from
# scratch, bf16, configs/gpu/), one seed, on one H100/H200, into results/gpu/ (RESULTS.md, results.json, plots).
# RL is judged against its SFT start on 500 held-out problems (the suite's default --val-large: RL's best/ is
# picked on val, so val cannot judge it), evaluated greedily, seconds beside the test splits.
# Each job has a safety stop in minutes so the whole suite takes about 7.5; run it after benchmarks/gpu_smoke.sh
# (benchmarks/device_session.sh runs both on a lent machine).
# Extra arguments go to `atp-latent bench` (e.g. --set optim.batch_size=64, --scale 0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
start=$(date +%s)
# (not $OUT: the device tool sets it to the folder that comes back, which must not receive the runs)
"$PY" -m atp_latent.cli bench --suite gpu --seeds 1 --out "${GPU_BENCH_OUT:-results/gpu}" "$@"
echo "GPU suite wall time: $(( $(date +%s) - start )) s on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
