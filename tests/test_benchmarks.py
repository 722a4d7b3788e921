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


SMOKE_CHECKS = ["paper_model", "paper_config", "sft_run", "sft_memory_flat", "sft_throughput", "rl_grpo_step"]


def test_gpu_smoke_cpu(tmp_path):
    """The GPU smoke check at CPU shapes: the paper configs through sft.train and rl.train_rl, every check PASS,
    one timing line per SFT epoch and one for the RL step, and the markdown summary."""
    back = tmp_path / "back"  # what the device tool brings back ($OUT)
    back.mkdir()
    # through the device session's script (which calls gpu_smoke.sh), as a lent GPU session runs it
    out = run(["env", f"OUT={back}", "bash", "benchmarks/device_session.sh", "smoke", "--cpu"])
    assert (back / "smoke.log").read_text().strip().splitlines() == [line for line in out if not line.startswith("torch ")]
    checks = [line.split() for line in out if line.startswith("CHECK ")]
    assert [c[1] for c in checks] == SMOKE_CHECKS, out
    assert all(c[2] == "PASS" for c in checks), "\n".join(out)
    assert "first_ratio_dev=0" in next(" ".join(c) for c in checks if c[1] == "rl_grpo_step")
    assert [line.split()[2] for line in out if line.startswith("TIME sft epoch=")] == ["epoch=1", "epoch=2", "epoch=3"]
    assert any(line.startswith("TIME rl step step_seconds=") for line in out)
    assert any(line.startswith("SUMMARY PASS 6/6") for line in out)
    md = (back / "SMOKE.md").read_text()
    assert "- device: cpu" in md and "transformers" in md and "gpu_smoke.sh --cpu" in md
    assert all(" ".join(c) in md for c in checks)


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
