"""The speed benchmarks in benchmarks/ run end to end at tiny sizes (their figures are measured by running them in
full). The GPU scripts in gpu/ are tested in test_gpu_suite.py."""

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
    if script == "latent_engine.py":  # CODI's and CoLaR's ratios against Coconut, each at 6 filled latents
        for key in ("codi_train_step_vs_coconut=", "codi_generate_vs_coconut=", "colar_generate_vs_coconut="):
            assert any(line.startswith(key) and float(line.split("=")[1]) > 0 for line in out), key
        assert any("fewest latents filled by a row: coconut {6}, colar {6}" in line for line in out)
