"""A run killed with SIGKILL mid-epoch and resumed ends with the same parameters as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.reasoner import LatentReasoner


def _cmd(data, out, name, method="coconut", extra=()):
    sets = [f"data.train={data / 'train.jsonl'}", "data.val=null", f"method.name={method}", "optim.batch_size=8",
            "train.epochs=3", "train.checkpoint_every=3", "train.keep_last=2", "train.threads=1",
            "curriculum.max_latent_stage=2", "curriculum.epochs_per_stage=1", "method.latents_per_step=1",
            "optim.lr=0.003"]
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--output-dir", str(out), "--name", name, *extra]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_benchmark(data, SynthConfig(seed=5, n_train=120, n_val=8, n_test=8, n_ood=8))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(data, tmp_path, "full"), check=True, capture_output=True, env=env, timeout=300)

    proc = subprocess.Popen(_cmd(data, tmp_path, "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    target = tmp_path / "killed" / "checkpoints" / "step-00000018" / "COMPLETE"  # mid-epoch 1 (15 batches/epoch)
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"
    done = subprocess.run(_cmd(data, tmp_path, "killed", extra=["--resume"]), capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    a, _ = LatentReasoner.from_pretrained(tmp_path / "full" / "final")
    b, _ = LatentReasoner.from_pretrained(tmp_path / "killed" / "final")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name, rtol=0, atol=0)
    # Pruned to the last 2 complete checkpoints; no temporary directories left behind.
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert len(ckpts) == 2 and all(c.startswith("step-") for c in ckpts)
