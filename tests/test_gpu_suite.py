"""`atp-latent bench --suite gpu` end to end on CPU at tiny shapes: the entry point, configs (bf16 autocast
included) and schedule a GPU run uses, with --set overrides that shrink the model and the runs."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.jobs import SUITES

ROOT = Path(__file__).resolve().parents[1]

TINY = ["model.preset=llama-tiny", "optim.batch_size=8", "data.epoch_size=16", "data.max_val=8",
        "eval.batch_size=8", "train.max_minutes=null", "train.max_steps=null", "train.epochs=5",
        "rl.steps=2", "rl.questions_per_step=2", "rl.group_size=2", "rl.minibatch_size=4", "rl.val_every=1",
        "rl.checkpoint_every=1"]


def test_gpu_suite_runs_every_method_on_cpu_at_tiny_shapes(tmp_path):
    out = tmp_path / "gpu"
    write_benchmark(out / "seed-0" / "data", SynthConfig(seed=0, n_train=64, n_val=8, n_test=8, n_ood=8))
    back = tmp_path / "back"  # what the device tool brings back ($OUT): the summaries, not the runs
    back.mkdir()
    # as a lent GPU session runs it, with the held-out split shrunk from the suite's default (DEFAULT_VAL_LARGE)
    args = ["bash", "benchmarks/device_session.sh", "suite", "--val-large", "40"]
    for s in TINY:
        args += ["--set", s]
    env = {**os.environ, "OUT": str(back), "GPU_BENCH_OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in back.iterdir()) == sorted(
        ["RESULTS.md", "results.json", "accuracy_vs_tokens.png", "training_curves.png", "latents_used.png", "bench.log",
         "runs.tar.gz"] + (["gpu.csv"] if shutil.which("nvidia-smi") else []))
    assert len(list(back.iterdir())) <= 8  # what the device tool brings back
    with tarfile.open(back / "runs.tar.gz") as tar:  # every run's small files, for a suite cut off before RESULTS.md
        packed = set(tar.getnames())
    for job in SUITES["gpu"].jobs:
        assert {f"./seed-0/runs/{job}/{f}" for f in ("config.yaml", "metrics.jsonl", "test_eval.json")} <= packed
        assert f"./seed-0/logs/{job}.log" in packed
    assert not any("/best/" in n or "/checkpoints/" in n or n.endswith(".safetensors") for n in packed)
    assert (back / "RESULTS.md").read_text() == (out / "RESULTS.md").read_text()
    assert "GPU suite wall time:" in (back / "bench.log").read_text()
    res = json.loads((out / "results.json").read_text())
    jobs = SUITES["gpu"].jobs
    assert set(res["mean"]) == set(jobs) and len(jobs) == 12  # the paper comparison and the Table-1 baselines
    for job in jobs:
        cfg = yaml.safe_load((out / "seed-0" / "runs" / job / "config.yaml").read_text())
        assert cfg["train"]["mixed_precision"] == "bf16" and cfg["optim"]["batch_size"] == 8
        assert res["costs"][job][0]["steps"] >= 1
    cot = yaml.safe_load((out / "seed-0" / "runs" / "cot" / "config.yaml").read_text())
    assert cot["model"]["preset"] == "llama-tiny"
    # the GPU configs themselves: the larger model, bf16, 4x the CPU batch
    gpu = yaml.safe_load((out / "seed-0" / "runs" / "atp" / "config.yaml").read_text())
    assert gpu["method"]["name"] == "atp" and gpu["model"]["init_from"].endswith("cot/best/model")
    text = (out / "RESULTS.md").read_text()
    assert text.startswith("# GPU benchmark") and "ATP-Latent (RL) − SIM-CoT" in text
    assert "RL against its SFT start" in text
    # RL against its start on the fresh in-distribution sample: the gain is what the flipped problems make it
    assert "The same on 40 fresh in-distribution problems" in text
    assert len((out / "seed-0" / "data" / "val_large.jsonl").read_text().splitlines()) == 40
    large = res["rl_vs_start_val_large"]
    for job in ("atp_rl", "atp_rl_coherence"):
        (gained, lost), = large[job]["gained_lost"]
        assert large[job]["gains"][0] == pytest.approx((gained - lost) / 40)
    # the claim, decided from the numbers above it, RL against its start on the held-out problems only, by the
    # paired bootstrap over those problems (one seed: problems alone are resampled)
    assert "## The claim" in text and "The claim as a whole: **" in text
    assert res["rl_vs_start_val"]["held_out"] is False and res["rl_vs_start_val_large"]["held_out"] is True
    parts = ("simcot", "coconut", "rl_over_start")
    assert set(res["claim"]) == {*parts, "holds"}
    rl = res["claim"]["rl_over_start"]
    (gained, lost), = large["atp_rl"]["gained_lost"]
    assert rl["split"] == "val_large" and rl["mean_gain"] == pytest.approx((gained - lost) / 40)
    assert rl["interval"]["n_seeds"] == 1 and rl["interval"]["n_problems"] == 40
    assert rl["holds"] == (rl["interval"]["ci_low"] > 0)
    judged = [res["claim"][k]["holds"] for k in parts]
    assert res["claim"]["holds"] == (False if False in judged else (True if all(judged) else None))


def test_gpu_suite_stops_itself_before_the_device_deadline_and_packs_its_runs(tmp_path):
    """DEADLINE_S (the device call's timeout_s): the suite stops 30 s before it, exits 124, and what it trained so
    far comes back in runs.tar.gz (a call the device tool kills runs nothing after the kill)."""
    out = tmp_path / "gpu"
    write_benchmark(out / "seed-0" / "data", SynthConfig(seed=0, n_train=64, n_val=8, n_test=8, n_ood=8))
    back = tmp_path / "back"
    back.mkdir()
    args = ["bash", "benchmarks/device_session.sh", "suite"]
    for s in TINY:
        args += ["--set", s]
    env = {**os.environ, "OUT": str(back), "GPU_BENCH_OUT": str(out), "PYTHON": sys.executable}
    bad = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env | {"DEADLINE_S": "9 min"})
    assert bad.returncode == 2 and "DEADLINE_S must be a number of seconds" in bad.stderr
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env | {"DEADLINE_S": "45"},
                          timeout=120)
    assert proc.returncode == 124, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the suite was stopped at DEADLINE_S - 30 s" in (back / "bench.log").read_text()
    assert not (back / "RESULTS.md").exists()
    with tarfile.open(back / "runs.tar.gz") as tar:
        packed = set(tar.getnames())
    assert {"./seed-0/logs/cot.log", "./seed-0/runs/cot/config.yaml"} <= packed


def test_gpu_suite_judges_rl_on_a_few_hundred_held_out_problems():
    """The GPU suite draws held-out problems by default (RL's best/ is picked on val), few enough to evaluate
    greedily within its device call: no rollouts."""
    from atp_latent.jobs import DEFAULT_ROLLOUTS, DEFAULT_VAL_LARGE

    assert 200 <= DEFAULT_VAL_LARGE["gpu"] <= 1000 and DEFAULT_ROLLOUTS["gpu"] == 0


def test_gpu_configs_are_one_size_up():
    from atp_latent.config import load_config
    from atp_latent.jobs import config_path

    for job in SUITES["gpu"].jobs:
        gpu, cpu = (load_config(str(config_path(SUITES[s], job))) for s in ("gpu", "cpu"))
        assert gpu.train.mixed_precision == "bf16" and gpu.optim.batch_size == 4 * cpu.optim.batch_size
        assert gpu.method == cpu.method and gpu.curriculum == cpu.curriculum and gpu.rl == cpu.rl
        assert gpu.train.max_minutes and gpu.train.max_minutes <= 2.5
    # The paper's comparison alone (`bench --suite gpu --jobs ...`: phases of at most two jobs, each bounded by its
    # safety stop) trains within 6.5 minutes, so with its evaluation it fits one device call beside the GPU check in a
    # 15-minute lease; the whole suite adds the Table-1 baselines.
    from atp_latent.jobs import subset

    paper = subset(SUITES["gpu"], ["atp_rl", "atp_rl_coherence", "coconut", "simcot", "nocot"])
    assert set(paper.jobs) == {"cot", "nocot", "atp", "coconut", "simcot", "atp_rl", "atp_rl_coherence"}
    stops = [max(load_config(str(config_path(SUITES["gpu"], j))).train.max_minutes for j in phase)
             for phase in paper.phases]
    assert sum(stops) <= 6.5, stops
    assert {"icot", "codi", "simcot_codi", "colar", "colar_rl"} <= set(SUITES["gpu"].jobs)
    assert load_config(str(config_path(SUITES["gpu"], "cot"))).model.preset == "llama-medium"
