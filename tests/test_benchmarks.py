"""The speed benchmarks in benchmarks/ run end to end at tiny sizes (their figures are measured by running them in
full). The GPU scripts in gpu/ are tested in test_gpu_suite.py."""

import math
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


def rl_step_tiny(*extra):
    return [sys.executable, "benchmarks/rl_step.py", "--questions", "2", "--group-size", "2", "--minibatch", "2",
            "--max-new-tokens", "3", "--threads", "1", "--repeats", "1", *extra]


def test_rl_step_runs_the_gpu_runs_options_on_cpu():
    """rl_step.py's GPU run (--mixed-precision bf16, --vocab padding the vocabulary) as far as a CPU goes: bf16
    autocast on CPU, at the tiny shape. The coherence decode's share comes out a share of the step."""
    out = run(rl_step_tiny("--device", "cpu", "--mixed-precision", "bf16", "--vocab", "300"))
    assert out[0].startswith("device=cpu") and "mixed_precision=bf16" in out[0]
    assert out[1].startswith("timing: ")
    assert any(line.startswith("preset=llama-tiny vocab=300 (tokenizer ") for line in out)
    # bf16 rounding between the engine and the bare passes is reported against the bf16 tolerance
    assert any("bf16 autocast rounding tolerance" in line and line.endswith("within") for line in out)
    shares = [line for line in out if line.startswith("coherence_decode_share=")]
    assert len(shares) == 1
    share = float(shares[0].split("=")[1])
    assert math.isfinite(share) and 0 < share <= 1


def test_rl_step_on_cuda_without_a_gpu_says_so_in_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = subprocess.run(rl_step_tiny("--device", "cuda"), capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "no CUDA device" in lines[0], proc.stderr
