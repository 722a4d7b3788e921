"""The benchmark scripts run end to end at tiny sizes (their figures are measured by running them in full)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


def run(args):
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()


def test_gpu_smoke_cpu():
    out = run(["bash", "benchmarks/gpu_smoke.sh", "--cpu"])
    assert any(line.startswith("sft: batch=") for line in out) and any(line.startswith("rl: rollouts=") for line in out)


@pytest.mark.parametrize("script,args,last", [
    ("latent_engine.py", ["--n", "8", "--n-baseline", "2", "--batch-size", "4", "--max-new-tokens", "3",
                          "--threads", "1", "--repeats", "1"], "overhead_vs_bare_forward="),
    ("rl_step.py", ["--questions", "2", "--group-size", "2", "--minibatch", "2", "--max-new-tokens", "3",
                    "--threads", "1", "--repeats", "1"], "overhead_vs_bare_passes="),
])
def test_benchmark_scripts_print_their_ratio(script, args, last):
    out = run([sys.executable, f"benchmarks/{script}", *args])
    assert out[-1].startswith(last)
    assert float(out[-1].split("=")[1]) > 0
