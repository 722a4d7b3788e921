"""Runs killed with SIGKILL and resumed end with the weights and the metrics of an uninterrupted run.

Both runs draw random numbers after the checkpoint they resume from (ATP SFT samples its latents; RL samples
latents, stops and answer tokens and shuffles its minibatches), so a resume that does not restore the random
streams ends elsewhere."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.reasoner import LatentReasoner

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# metrics that are a function of the computation (not of the clock)
SFT_KEYS = ("train/loss", "train/ce", "train/kl", "train/decoder", "train/stop", "train/active_latents", "train/stage")
RL_KEYS = ("train/reward", "train/reward_format", "train/reward_coherence", "train/loss", "train/latent_loss",
           "train/stop_loss", "train/answer_loss", "train/grad_norm", "train/sigma", "train/active_latents",
           "train/approx_kl_latent", "train/latents_used/hist")


def _train_cmd(name, out, sets, extra=()):
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--output-dir", str(out), "--name", name, *extra]
    for s in sets:
        args += ["--set", s]
    return args


def _kill_after(cmd, marker, timeout=240):
    """Start `cmd`, SIGKILL it as soon as `marker` exists; returns once it is dead."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _rows(run, keys):
    """step -> the given metrics, from every line that holds the first key."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if keys[0] in r:
            out[r["step"]] = {k: r.get(k) for k in keys}
    return out


def _same_weights(a_dir, b_dir):
    a, _ = LatentReasoner.from_pretrained(a_dir)
    b, _ = LatentReasoner.from_pretrained(b_dir)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name, rtol=0, atol=0)


def test_atp_sft_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_benchmark(data, SynthConfig(seed=5, n_train=48, n_val=8, n_test=8, n_ood=8))
    sets = [f"data.train={data / 'train.jsonl'}", "data.val=null", "method.name=atp", "optim.batch_size=8",
            "train.epochs=2", "train.checkpoint_every=4", "train.keep_last=2", "train.threads=1", "train.log_every=1",
            "curriculum.max_latent_stage=2", "curriculum.epochs_per_stage=1", "method.latents_per_step=1",
            "optim.lr=0.003"]
    full = subprocess.Popen(_train_cmd("full", tmp_path, sets), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=ENV, text=True)
    # mid-epoch 0 (6 batches per epoch), after latents were sampled since step 0
    _kill_after(_train_cmd("killed", tmp_path, sets), tmp_path / "killed" / "checkpoints" / "step-00000004" / "COMPLETE")
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"
    done = subprocess.run(_train_cmd("killed", tmp_path, sets, extra=["--resume"]), capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]
    _same_weights(tmp_path / "full" / "final", tmp_path / "killed" / "final")
    a, b = _rows(tmp_path / "full", SFT_KEYS), _rows(tmp_path / "killed", SFT_KEYS)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert a == b
    # Pruned to the last 2 complete checkpoints; no temporary directories left behind.
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert len(ckpts) == 2 and all(c.startswith("step-") for c in ckpts)


def test_rl_sigkill_then_resume_matches_uninterrupted(toy, rl_sets, tmp_path):
    from atp_latent.config import load_config
    from atp_latent.training.rl import train_rl

    over = {"rl.questions_per_step": 4, "rl.group_size": 4, "rl.minibatch_size": 4, "rl.steps": 6,
            "rl.checkpoint_every": 2, "rl.max_new_tokens": 8, "rl.lr": 5e-4, "data.val": "null",
            "train.keep_last": 2, "output_dir": tmp_path}
    killed = [s for s in rl_sets(toy, "killed", **over)]
    proc_cmd = _train_cmd("killed", tmp_path, killed)
    _kill_after(proc_cmd, tmp_path / "killed" / "checkpoints" / "step-00000002" / "COMPLETE")
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"
    resumed = subprocess.Popen(_train_cmd("killed", tmp_path, killed, extra=["--resume"]), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=ENV, text=True)
    full = train_rl(load_config(None, rl_sets(toy, "full", **over)))  # meanwhile, uninterrupted, in this process
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    _same_weights(full / "final", tmp_path / "killed" / "final")
    a, b = _rows(full, RL_KEYS), _rows(tmp_path / "killed", RL_KEYS)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert a == b
    # the reported wall time spans both processes: at least the time of every step either of them logged
    steps = _rows(tmp_path / "killed", ("train/step_seconds",))
    finished = _rows(tmp_path / "killed", ("train/finished", "train/minutes"))[6]
    assert 60 * finished["train/minutes"] >= sum(r["train/step_seconds"] for r in steps.values())
    # the case is not vacuous: the policy was updated after the checkpoint it resumed from
    assert len({r["train/reward"] for r in a.values()}) > 1 and sum(a[s]["train/grad_norm"] > 0 for s in (3, 4, 5, 6)) >= 2
