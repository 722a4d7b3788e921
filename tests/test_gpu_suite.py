"""The GPU scripts in gpu/, run on CPU: the smoke check (gpu/smoke.sh --cpu) and `atp-latent bench --suite gpu`
(gpu/suite.sh --cpu) end to end at tiny shapes (the entry points, configs, bf16 autocast and schedule a GPU run
uses, with --set overrides that shrink the model and the runs); what they write into --out; the time limit;
the dependency folder (gpu/deps.sh, --deps) on a Python that lacks omegaconf."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.jobs import SUITES

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}

TINY = ["model.preset=llama-tiny", "optim.batch_size=8", "data.epoch_size=16", "data.max_val=8",
        "eval.batch_size=8", "train.max_minutes=null", "train.max_steps=null", "train.epochs=3",
        "rl.steps=2", "rl.questions_per_step=2", "rl.group_size=2", "rl.minibatch_size=4", "rl.val_every=1",
        "rl.checkpoint_every=1"]
SUMMARIES = ["RESULTS.md", "results.json", "accuracy_vs_tokens.png", "training_curves.png", "latents_used.png"]
SMOKE_CHECKS = ["paper_model", "paper_config", "sft_run", "sft_memory_flat", "sft_throughput", "rl_grpo_step"]
LORA_CHECKS = ["lora_codi_sft", "lora_colar_sft", "lora_colar_rl_step"]


def suite_args(*extra):
    args = ["bash", "gpu/suite.sh", "--cpu", *extra]
    for s in TINY:
        args += ["--set", s]
    return args


def small_data(runs: Path) -> None:
    write_benchmark(runs / "seed-0" / "data", SynthConfig(seed=0, n_train=64, n_val=8, n_test=8, n_ood=8))


def packed(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


def test_gpu_suite_runs_every_method_on_cpu_at_tiny_shapes(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"  # the runs (checkpoints) apart from the summaries
    small_data(runs)
    # with the held-out split shrunk from the suite's default (DEFAULT_VAL_LARGE)
    proc = subprocess.run(suite_args("--out", str(out), "--runs", str(runs), "--val-large", "40"),
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        SUMMARIES + ["bench.log", "runs.tar.gz"] + (["gpu.csv"] if shutil.which("nvidia-smi") else []))
    names = packed(out / "runs.tar.gz")  # every run's small files, for a suite cut off before RESULTS.md
    assert names == small_files(runs)
    for job in SUITES["gpu"].jobs:
        assert {f"./seed-0/runs/{job}/{f}" for f in ("config.yaml", "metrics.jsonl", "test_eval.json")} <= names
        assert f"./seed-0/logs/{job}.log" in names
    assert not any("/best/" in n or "/checkpoints/" in n or n.endswith(".safetensors") for n in names)
    assert (out / "RESULTS.md").read_text() == (runs / "RESULTS.md").read_text()
    log = (out / "bench.log").read_text()
    assert log.startswith("# python ") and "cuda False" in log.splitlines()[0]
    assert "GPU suite wall time:" in log and "s on cpu" in log
    res = json.loads((runs / "results.json").read_text())
    jobs = SUITES["gpu"].jobs
    assert set(res["mean"]) == set(jobs) and len(jobs) == 12  # the paper comparison and the Table-1 baselines
    assert len(res["steps_per_problem"]["test"]) == 8  # each test problem's step count, for the table by steps
    assert "by the problem's number of solution steps" in (runs / "RESULTS.md").read_text()
    for job in jobs:
        cfg = yaml.safe_load((runs / "seed-0" / "runs" / job / "config.yaml").read_text())
        assert cfg["train"]["mixed_precision"] == "bf16" and cfg["optim"]["batch_size"] == 8
        assert res["costs"][job][0]["steps"] >= 1
    cot = yaml.safe_load((runs / "seed-0" / "runs" / "cot" / "config.yaml").read_text())
    assert cot["model"]["preset"] == "llama-tiny"
    # the GPU configs themselves: the larger model, bf16, 4x the CPU batch
    gpu = yaml.safe_load((runs / "seed-0" / "runs" / "atp" / "config.yaml").read_text())
    assert gpu["method"]["name"] == "atp" and gpu["model"]["init_from"].endswith("cot/best/model")
    text = (out / "RESULTS.md").read_text()
    assert text.startswith("# GPU benchmark") and "ATP-Latent (RL) − SIM-CoT" in text
    assert "RL against its SFT start" in text
    # RL against its start on the fresh in-distribution sample: the gain is what the flipped problems make it
    assert "The same on 40 fresh in-distribution problems" in text
    assert len((runs / "seed-0" / "data" / "val_large.jsonl").read_text().splitlines()) == 40
    large = res["rl_vs_start_val_large"]
    for job in ("atp_rl", "atp_rl_coherence"):
        (gained, lost), = large[job]["gained_lost"]
        assert large[job]["gains"][0] == pytest.approx((gained - lost) / 40)
        (step,) = large[job]["best_steps"]  # read from the run's best/ trainer state
        assert 0 <= step <= res["costs"][job][0]["steps"]
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


def test_gpu_suite_stops_itself_before_its_time_limit_and_packs_its_runs(tmp_path):
    """--time-limit T: the suite is stopped 30 s before T (counted from the script's start), the script exits 124
    within T, and what the suite trained so far is packed in runs.tar.gz. One folder: the runs beside the
    summaries."""
    out = tmp_path / "gpu"
    small_data(out)
    bad = subprocess.run(suite_args("--out", str(out), "--time-limit", "9 min"), capture_output=True, text=True,
                         cwd=ROOT, env=ENV)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--time-limit must be above 40 s" in bad.stderr
    assert not out.joinpath("bench.log").exists()  # refused before anything ran
    # 30 s of running leaves the first job time to start on a loaded host (15 s did not, beside two benches)
    t = time.monotonic()
    proc = subprocess.run(suite_args("--out", str(out), "--time-limit", "60"), capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=120)
    took = time.monotonic() - t
    assert proc.returncode == 124, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert took < 60, took
    assert "stopped 30 s before --time-limit 60 s" in (out / "bench.log").read_text()
    assert not (out / "RESULTS.md").exists()
    # every small file the stopped jobs left, the first job's training log at least
    assert packed(out / "runs.tar.gz") == small_files(out) and "./seed-0/logs/cot.log" in small_files(out)


def small_files(runs: Path) -> set[str]:
    """The run files runs.tar.gz is to hold: the training logs and each run's config, environment, metrics and
    cached evaluations (not its checkpoints)."""
    keep = {"config.yaml", "environment.json", "metrics.jsonl"}
    logs = {f"./{p.relative_to(runs)}" for p in runs.glob("seed-*/logs/*.log")}
    return logs | {f"./{p.relative_to(runs)}" for p in runs.glob("seed-*/runs/*/*")
                   if p.is_file() and (p.name in keep or p.name.endswith("_eval.json"))}


def test_gpu_suite_passes_ctrl_c_on_to_its_jobs_and_packs_its_runs(tmp_path):
    """The suite runs in its own process group (so that the time limit stops its jobs too): an interrupt of the
    script reaches the suite and its training jobs, and what they wrote is still packed."""
    out = tmp_path / "gpu"
    small_data(out)
    # Ctrl-C as at a terminal: a test run started in the background by a non-interactive shell (`pytest &`) inherits
    # SIGINT ignored, which bash then cannot trap, and the suite would run to its end (exit 0)
    proc = subprocess.Popen(suite_args("--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        log = out / "seed-0" / "logs" / "cot.log"
        for _ in range(240):  # the first job has started training
            if log.is_file() and (out / "seed-0" / "runs" / "cot" / "config.yaml").is_file():
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # say which process is still up, and where the suite's log stopped
            left = {read_cmdline(p)[:160]: process_state(p) for p in suite_processes(out)}
            tail = (out / "bench.log").read_text()[-1500:] if (out / "bench.log").is_file() else ""
            pytest.fail(f"the suite did not stop within 60 s of Ctrl-C; still running: {left}; bench.log ends: {tail}")
        assert status != 0
        # no process of this suite is left running (none names its folder on its command line)
        assert not suite_processes(out), [read_cmdline(p) for p in suite_processes(out)]
    finally:  # a failure leaves no suite running
        if proc.poll() is None:
            proc.kill()
        for p in suite_processes(out):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(p.name), signal.SIGKILL)
    assert "GPU suite wall time:" in (out / "bench.log").read_text()
    assert packed(out / "runs.tar.gz") == small_files(out)
    assert {"./seed-0/logs/cot.log", "./seed-0/runs/cot/config.yaml"} <= small_files(out)


def suite_processes(out: Path) -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(out) in read_cmdline(p)]


def process_state(p: Path) -> str:
    """A process's state letter and what it waits in (/proc stat and wchan), for a failure message."""
    try:
        return (p / "stat").read_text().split(") ", 1)[1].split()[0] + " " + (p / "wchan").read_text()
    except (OSError, IndexError):
        return "?"


def read_cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
@pytest.mark.parametrize("script", ["smoke.sh", "suite.sh"])
def test_gpu_scripts_refuse_to_run_without_a_gpu_unless_told_cpu(tmp_path, script):
    proc = subprocess.run(["bash", f"gpu/{script}", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=ROOT, env=ENV)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "sees no CUDA device" in proc.stderr
    assert "pass --cpu" in proc.stderr and not (tmp_path / "out").exists()


def python_without(home: Path, module: str) -> str:
    """A Python like the one running the tests whose site-packages lack `module` (and this package): a GPU
    machine's image without it. A virtual environment whose site-packages link to this one's, `module` left out."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(home)
    python = home / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(torch.__file__).resolve().parents[1].iterdir():
        if not entry.name.startswith((module, "atp_latent", "__editable__")):
            (site / entry.name).symlink_to(entry)
    assert subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 1
    return str(python)


@pytest.fixture(scope="module")
def python_without_omegaconf(tmp_path_factory):
    return python_without(tmp_path_factory.mktemp("bare-python"), "omegaconf")


def test_missing_dependency_is_one_error_line_and_a_deps_folder_supplies_it(tmp_path, python_without_omegaconf):
    env = {**ENV, "PYTHON": python_without_omegaconf}
    for script in ("smoke.sh", "suite.sh"):
        proc = subprocess.run(["bash", f"gpu/{script}", "--cpu", "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr  # one line
        assert f"gpu/{script}: error: {python_without_omegaconf} lacks omegaconf" in proc.stderr
        assert "--deps DIR" in proc.stderr and "bash gpu/deps.sh DIR omegaconf" in proc.stderr
    assert not (tmp_path / "out").exists()
    # a folder of pure-Python wheels (here omegaconf zipped from this Python's copy) works as --deps too
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    pkg = Path(__import__("omegaconf").__file__).parent
    with zipfile.ZipFile(wheels / "omegaconf-2.4.0-py3-none-any.whl", "w") as whl:
        for f in pkg.rglob("*.py"):
            whl.write(f, f.relative_to(pkg.parent))
    proc = subprocess.run(["bash", "gpu/suite.sh", "--cpu", "--check", "--deps", str(wheels)],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# python 3.") and python_without_omegaconf in proc.stdout
    missing = subprocess.run(["bash", "gpu/suite.sh", "--cpu", "--deps", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, cwd=ROOT, env=env)
    assert missing.returncode == 2 and "--deps " + str(tmp_path / "nowhere") + ": no such folder" in missing.stderr


def test_gpu_smoke_cpu_with_a_deps_folder(tmp_path, python_without_omegaconf):
    """The GPU smoke check at CPU shapes on a Python without omegaconf, given it in a folder made by gpu/deps.sh:
    the paper configs through sft.train and rl.train_rl, every check PASS, one timing line per SFT epoch and one for
    the RL step; SMOKE.md and smoke.log in --out."""
    deps = tmp_path / "deps"
    made = subprocess.run(["bash", "gpu/deps.sh", str(deps)], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert made.returncode == 0, made.stderr
    assert (deps / "omegaconf" / "__init__.py").is_file() and not list(deps.rglob("__pycache__"))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "gpu/smoke.sh", "--cpu", "--deps", str(deps), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env={**ENV, "PYTHON": python_without_omegaconf},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("# python ") and python_without_omegaconf in lines[0]
    checks = [line.split() for line in lines if line.startswith("CHECK ")]
    assert [c[1] for c in checks] == SMOKE_CHECKS, lines
    assert all(c[2] == "PASS" for c in checks), "\n".join(lines)
    assert "first_ratio_dev=0" in next(" ".join(c) for c in checks if c[1] == "rl_grpo_step")
    assert [line.split()[2] for line in lines if line.startswith("TIME sft epoch=")] == ["epoch=1", "epoch=2", "epoch=3"]
    rl_time = next(line for line in lines if line.startswith("TIME rl step step_seconds="))
    assert " plan_decode_seconds=" in rl_time and " plan_decode_share=" in rl_time  # the coherence reward's cost
    assert any(line.startswith("SUMMARY PASS 6/6") for line in lines)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["SMOKE.md", "smoke.log"] + (["gpu.csv"] if shutil.which("nvidia-smi") else []))
    log = (out / "smoke.log").read_text().splitlines()
    assert all(line in log for line in lines)  # stdout, and stderr besides
    md = (out / "SMOKE.md").read_text()
    assert "- device: cpu" in md and "transformers" in md and "`bash gpu/smoke.sh --cpu --out " in md
    assert all(" ".join(c) in md for c in checks)


def test_gpu_smoke_lora_recipes_cpu(tmp_path):
    """`gpu/smoke.sh --lora` at CPU shapes: CODI and CoLaR SFT through the paper's LoRA configs and one CoLaR-RL step,
    every check PASS (adapters trained and saved, the LM's own weights as loaded, first_ratio_dev 0), one timing line
    per SFT epoch; a Python without peft gets one error line, and only with --lora."""
    proc = subprocess.run(["bash", "gpu/smoke.sh", "--cpu", "--lora", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    checks = [line.split() for line in lines if line.startswith("CHECK ")]
    assert [c[1] for c in checks] == LORA_CHECKS and all(c[2] == "PASS" for c in checks), "\n".join(lines)
    sft = {c[1]: dict(kv.split("=", 1) for kv in c[3:]) for c in checks}
    for name in ("lora_codi_sft", "lora_colar_sft"):
        assert sft[name]["lm_weights_unchanged"] == "True" and sft[name]["lora_b_trained"].split("/")[0] != "0"
        assert [line.split()[2] for line in lines if line.startswith(f"TIME {name} epoch=")] == ["epoch=1", "epoch=2"]
    assert sft["lora_colar_rl_step"]["first_ratio_dev"] == "0"
    assert any(line.startswith("SUMMARY PASS 3/3") for line in lines)
    assert "- shape: lora preset=llama-tiny" in (tmp_path / "out" / "SMOKE.md").read_text()

    bare = python_without(tmp_path / "bare", "peft")
    env = {**ENV, "PYTHON": bare}
    missing = subprocess.run(["bash", "gpu/smoke.sh", "--cpu", "--lora", "--check"], capture_output=True, text=True,
                             cwd=ROOT, env=env)
    assert missing.returncode == 2 and missing.stderr.splitlines() == [missing.stderr.strip()]
    assert f"{bare} lacks peft" in missing.stderr
    assert subprocess.run(["bash", "gpu/smoke.sh", "--cpu", "--check"], capture_output=True, cwd=ROOT,
                          env=env).returncode == 0


def test_gpu_suite_judges_rl_on_a_few_hundred_held_out_problems():
    """The GPU suite draws held-out problems by default (RL's best/ is picked on val), few enough to evaluate
    greedily in seconds beside the test splits: no rollouts."""
    from atp_latent.jobs import DEFAULT_ROLLOUTS, DEFAULT_VAL_LARGE

    assert 200 <= DEFAULT_VAL_LARGE["gpu"] <= 1000 and DEFAULT_ROLLOUTS["gpu"] == 0


def test_gpu_configs_are_one_size_up():
    from atp_latent.config import load_config
    from atp_latent.data.synthetic import SynthConfig
    from atp_latent.jobs import config_path
    from atp_latent.training.sft import batches_per_epoch, scheduled_steps

    # steps a second on an H200 with two jobs at once (results/gpu/2026-12-04-h200/): CoT-SFT, No-CoT, ATP SFT, ATP
    # RL measured; the others at the rate of the measured job they cost most like, CODI's teacher pass 1.5x
    rates = {"cot": 10.5, "nocot": 11.7, "atp": 4.8, "coconut": 4.8, "simcot": 4.8, "icot": 4.8, "colar": 4.8,
             "codi": 4.8 / 1.5, "simcot_codi": 4.8 / 1.5, "atp_rl": 1.0, "atp_rl_coherence": 1.0, "colar_rl": 1.0}
    assert set(rates) == set(SUITES["gpu"].jobs)
    for job in SUITES["gpu"].jobs:
        gpu, cpu = (load_config(str(config_path(SUITES[s], job))) for s in ("gpu", "cpu"))
        assert gpu.train.mixed_precision == "bf16" and gpu.optim.batch_size == 4 * cpu.optim.batch_size
        assert gpu.method == cpu.method and gpu.curriculum == cpu.curriculum and gpu.rl == cpu.rl
        # the safety stop ends a stuck run, it must not cut the schedule: at least twice its time on an H200
        steps = gpu.rl.steps if gpu.method.name.endswith("-rl") else \
            scheduled_steps(gpu, batches_per_epoch(gpu, SynthConfig().n_train, 1))
        assert steps in (300, 1000, 1300), (job, steps)
        assert 2 * steps / rates[job] / 60 <= gpu.train.max_minutes <= 20, (job, steps, gpu.train.max_minutes)
    from atp_latent.jobs import subset

    paper = subset(SUITES["gpu"], ["atp_rl", "atp_rl_coherence", "coconut", "simcot", "nocot"])
    assert set(paper.jobs) == {"cot", "nocot", "atp", "coconut", "simcot", "atp_rl", "atp_rl_coherence"}
    assert {"icot", "codi", "simcot_codi", "colar", "colar_rl"} <= set(SUITES["gpu"].jobs)
    assert load_config(str(config_path(SUITES["gpu"], "cot"))).model.preset == "llama-medium"
