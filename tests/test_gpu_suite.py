"""`atp-latent bench --suite gpu` end to end on CPU at tiny shapes: the entry point, configs (bf16 autocast
included) and schedule a GPU run uses, with --set overrides that shrink the model and the runs."""

import json

import yaml

from atp_latent.cli import main
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.suite import SUITES

TINY = ["model.preset=llama-tiny", "optim.batch_size=8", "data.epoch_size=16", "data.max_val=8",
        "eval.batch_size=8", "train.max_minutes=null", "train.max_steps=null", "train.epochs=5",
        "rl.steps=2", "rl.questions_per_step=2", "rl.group_size=2", "rl.minibatch_size=4", "rl.val_every=1",
        "rl.checkpoint_every=1"]


def test_gpu_suite_runs_every_method_on_cpu_at_tiny_shapes(tmp_path):
    out = tmp_path / "gpu"
    write_benchmark(out / "seed-0" / "data", SynthConfig(seed=0, n_train=64, n_val=8, n_test=8, n_ood=8))
    args = ["bench", "--suite", "gpu", "--seeds", "1", "--out", str(out)]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    jobs = SUITES["gpu"].jobs
    assert set(res["mean"]) == set(jobs) and len(jobs) == 7
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


def test_gpu_configs_are_one_size_up():
    from atp_latent.config import load_config
    from atp_latent.suite import config_path

    for job in SUITES["gpu"].jobs:
        gpu, cpu = (load_config(str(config_path(SUITES[s], job))) for s in ("gpu", "cpu"))
        assert gpu.train.mixed_precision == "bf16" and gpu.optim.batch_size == 4 * cpu.optim.batch_size
        assert gpu.method == cpu.method and gpu.curriculum == cpu.curriculum and gpu.rl == cpu.rl
        assert gpu.train.max_minutes and gpu.train.max_minutes <= 2.5
    assert load_config(str(config_path(SUITES["gpu"], "cot"))).model.preset == "llama-medium"
