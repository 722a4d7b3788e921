"""Train and compare several methods the same way: the quickstart and `atp-latent bench`.

A suite is a folder of configs (configs/<suite>/) and a plan of phases. The jobs of a phase run side by side
as one-thread processes (for tiny models two one-thread processes train faster than one two-thread process);
phases run one after another because later methods start from earlier checkpoints (the latent methods from
CoT-SFT, RL from ATP SFT; always the best validation checkpoint). Every model is then evaluated on every
synthetic test split with the same harness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from atp_latent.data.synthetic import SynthConfig, write_benchmark

TEST_SPLITS = ["test", "test_large", "test_long", "test_perturbed"]
LABELS = {"nocot": "No-CoT", "cot": "CoT-SFT", "coconut": "Coconut", "simcot": "SIM-CoT", "atp": "ATP-Latent (SFT)",
          "atp_rl": "ATP-Latent (RL)", "atp_rl_coherence": "ATP-Latent (RL, coherence only)"}
# Where each job starts from (its best validation checkpoint).
STARTS = {"coconut": "cot", "simcot": "cot", "atp": "cot", "atp_rl": "atp", "atp_rl_coherence": "atp"}


@dataclass(frozen=True)
class Suite:
    name: str  # the configs/<name>/ folder
    phases: tuple[tuple[str, ...], ...]

    @property
    def jobs(self) -> list[str]:
        return [j for phase in self.phases for j in phase]


SUITES = {
    "quickstart": Suite("quickstart", (("cot", "nocot"), ("atp", "coconut"), ("atp_rl",))),
    "cpu": Suite("bench", (("cot", "nocot"), ("atp", "coconut"), ("simcot", "atp_rl"), ("atp_rl_coherence",))),
}


def config_path(suite: Suite, job: str) -> Path:
    return Path(str(resources.files("atp_latent") / "configs" / suite.name / f"{job}.yaml"))


def _label(job: str) -> str:
    return LABELS.get(job, job)


def _start_job(suite: Suite, job: str, out: Path, seed: int, scale: float, extra: list[str]):
    data, runs = out / "data", out / "runs"
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--config", str(config_path(suite, job)),
            "--output-dir", str(runs), "--name", job, "--set", f"data.train={data / 'train.jsonl'}",
            "--set", f"data.val={data / 'val.jsonl'}", "--set", f"train.seed={seed}"]
    if job in STARTS:
        args += ["--set", f"model.init_from={runs / STARTS[job] / 'best' / 'model'}"]
    if scale != 1.0:
        from atp_latent.config import load_config

        minutes = load_config(str(config_path(suite, job))).train.max_minutes or 10.0
        args += ["--set", f"train.max_minutes={minutes * scale:.3f}"]
    for s in extra:
        args += ["--set", s]
    if (runs / job / "config.yaml").is_file():
        args.append("--resume")  # an interrupted suite continues where its checkpoints left off
    log = out / "logs" / f"{job}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env), log


def _status(run: Path) -> str:
    path = run / "metrics.jsonl"
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    for line in reversed(lines):
        m = json.loads(line)
        if "train/reward" in m:
            return f"step {m['step']} reward {m['train/reward']:.3f} acc {m['train/accuracy']:.2f}"
        if "train/loss" in m:
            return f"step {m['step']} loss {m['train/loss']:.3f} stage {m.get('train/stage', 0)}"
    return "starting"


def run_phase(suite: Suite, jobs: list[str], out: Path, seed: int, scale: float = 1.0,
              extra: list[str] | None = None) -> None:
    procs = {j: _start_job(suite, j, out, seed, scale, extra or []) for j in jobs}
    print(f"training {', '.join(jobs)} side by side (logs in {out / 'logs'})", flush=True)
    t0 = time.time()
    while any(p.poll() is None for p, _ in procs.values()):
        time.sleep(15)
        status = "; ".join(f"{j}: {_status(out / 'runs' / j)}" for j in jobs)
        print(f"  [{(time.time() - t0) / 60:4.1f} min] {status}", flush=True)
    for j, (p, log) in procs.items():
        if p.returncode != 0:
            tail = log.read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"training {j} failed (exit {p.returncode}); see {log}: " + " | ".join(tail))


def evaluate_jobs(jobs: list[str], out: Path, batch_size: int = 100) -> tuple[dict, dict]:
    """Every job's best checkpoint on every test split. Returns (summaries, per-problem latent counts)."""
    from atp_latent.data.formats import load_records
    from atp_latent.evaluation.evaluate import default_max_new_tokens, evaluate, load_for_eval

    results: dict[str, dict[str, dict]] = {}
    latents: dict[str, list[int]] = {}
    for job in jobs:
        model, _, builder = load_for_eval(out / "runs" / job)
        max_new = default_max_new_tokens(model.spec.method)
        results[job], latents[job] = {}, []
        for split in TEST_SPLITS:
            problems = load_records(out / "data" / f"{split}.jsonl")
            summary, rows = evaluate(model, builder, problems, batch_size=batch_size, max_new_tokens=max_new,
                                     desc=f"{job}/{split}")
            results[job][split] = summary.as_dict()
            latents[job] += [r["latents"] for r in rows]
        acc = sum(r["accuracy"] for r in results[job].values()) / len(TEST_SPLITS)
        print(f"  evaluated {_label(job)}: mean accuracy {100 * acc:.1f}%", flush=True)
    return results, latents


def run_suite(suite: Suite, out: Path, seed: int = 0, scale: float = 1.0, data_seed: int = 0,
              extra: list[str] | None = None) -> dict:
    """Data (shared by every method), the phases, the evaluation. Returns results[job][split]."""
    if not (out / "data" / "train.jsonl").is_file():
        write_benchmark(out / "data", SynthConfig(seed=data_seed))
    print(f"synthetic benchmark in {out / 'data'}", flush=True)
    for phase in suite.phases:
        todo = [j for j in phase if not (out / "runs" / j / "final" / "reasoner.json").is_file()]
        if todo:
            run_phase(suite, todo, out, seed, scale, extra)
    print("evaluating on every synthetic test split", flush=True)
    results, latents = evaluate_jobs(suite.jobs, out)
    (out / "results.json").write_text(json.dumps({"seed": seed, "results": results, "latents": latents}, indent=2))
    return results


def run_quickstart(args) -> int:
    from atp_latent.evaluation.evaluate import markdown_table

    out = Path(args.out)
    t0 = time.time()
    suite = SUITES["quickstart"]
    scale = args.minutes / 25.0 if args.minutes else 1.0
    results = run_suite(suite, out, seed=args.seed, scale=scale)
    table = markdown_table({_label(j): results[j] for j in suite.jobs}, TEST_SPLITS)
    minutes = (time.time() - t0) / 60
    (out / "RESULTS.md").write_text(
        f"# Quickstart results (seed {args.seed})\n\nAccuracy (%) on each synthetic test split; # tokens = active "
        f"latents + answer tokens (CoT: generated steps + answer).\n\n{table}\n\nTotal time: {minutes:.1f} min.\n")
    print("\n" + table + "\n")
    print(f"run directories: {out / 'runs'}  table: {out / 'RESULTS.md'}  ({minutes:.1f} min)")
    return 0


def run_bench(args) -> int:
    """`atp-latent bench --suite cpu --seeds N`: the whole suite per seed, then tables and plots."""
    from atp_latent.evaluation.report import (
        aggregate,
        plot_accuracy_vs_tokens,
        plot_latents,
        plot_training_curves,
        results_table,
    )

    if args.suite not in SUITES:
        raise ValueError(f"unknown suite {args.suite!r} (known: {', '.join(SUITES)})")
    suite, out = SUITES[args.suite], Path(args.out)
    scale = args.minutes / 75.0 if args.minutes else 1.0
    t0 = time.time()
    per_seed, latents = [], {j: [] for j in suite.jobs}
    for seed in range(args.seeds):
        seed_dir = out / f"seed-{seed}"
        print(f"== seed {seed} ==", flush=True)
        per_seed.append(run_suite(suite, seed_dir, seed=seed, scale=scale, data_seed=args.data_seed))
        saved = json.loads((seed_dir / "results.json").read_text())["latents"]
        for j in suite.jobs:
            latents[j] += saved[j]
    agg = aggregate(per_seed)
    table = results_table(agg, per_seed, TEST_SPLITS, LABELS)
    plot_accuracy_vs_tokens(agg, per_seed, TEST_SPLITS, LABELS, out / "accuracy_vs_tokens.png")
    plot_training_curves({j: [out / f"seed-{s}" / "runs" / j for s in range(args.seeds)] for j in suite.jobs},
                         LABELS, out / "training_curves.png")
    plot_latents(latents, LABELS, out / "latents_used.png")
    command = " ".join(["atp-latent", "bench", "--suite", args.suite, "--seeds", str(args.seeds)]
                       + (["--minutes", str(args.minutes)] if args.minutes else []) + ["--out", str(out)])
    (out / "results.json").write_text(json.dumps({"command": command, "seeds": args.seeds, "splits": TEST_SPLITS,
                                                  "mean": agg, "per_seed": per_seed}, indent=2))
    minutes = (time.time() - t0) / 60
    text = (f"# CPU benchmark: every method on the synthetic benchmark\n\nCommand: `{command}` "
            f"({minutes:.0f} min on this machine). Accuracy (%) per test split, mean ± std over {args.seeds} seed(s); "
            f"# tokens = active latents + answer tokens (CoT: generated steps + answer).\n\n{table}\n\n"
            "Plots: `accuracy_vs_tokens.png`, `training_curves.png`, `latents_used.png`.\n")
    notes = out / "NOTES.md"
    if notes.is_file():  # the analysis written by people stays with the table
        text += "\n" + notes.read_text()
    (out / "RESULTS.md").write_text(text)
    print("\n" + table + f"\n\nwrote {out / 'RESULTS.md'} ({minutes:.0f} min)")
    return 0
