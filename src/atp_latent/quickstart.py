"""`atp-latent quickstart`: the main job on the embedded default, on a CPU.

Synthetic data -> CoT-SFT and No-CoT trained side by side (two one-thread processes train faster than
one two-thread process on tiny models) -> the latent methods from the CoT checkpoint -> every
checkpoint evaluated on every synthetic test split -> one table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from atp_latent.data.synthetic import SynthConfig, write_benchmark

TEST_SPLITS = ["test", "test_large", "test_long", "test_perturbed"]
# Phases run one after another; the jobs of a phase run side by side.
PHASES: list[list[str]] = [["cot", "nocot"], ["atp", "coconut"], ["atp_rl"]]
LABELS = {"nocot": "No-CoT", "cot": "CoT-SFT", "coconut": "Coconut", "simcot": "SIM-CoT", "atp": "ATP-Latent (SFT)",
          "atp_rl": "ATP-Latent (RL)"}
# Where each method starts: the latent methods from CoT-SFT, RL from ATP SFT (best validation checkpoints).
STARTS = {"coconut": "cot", "simcot": "cot", "atp": "cot", "atp_rl": "atp"}


def config_path(name: str) -> Path:
    return Path(str(resources.files("atp_latent") / "configs" / "quickstart" / f"{name}.yaml"))


def _train_job(name: str, out: Path, seed: int, scale: float) -> tuple[subprocess.Popen, Path]:
    data = out / "data"
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--config", str(config_path(name)),
            "--output-dir", str(out / "runs"), "--name", name,
            "--set", f"data.train={data / 'train.jsonl'}", "--set", f"data.val={data / 'val.jsonl'}",
            "--set", f"train.seed={seed}"]
    if name in STARTS:
        args += ["--set", f"model.init_from={out / 'runs' / STARTS[name] / 'best' / 'model'}"]
    if scale != 1.0:
        from atp_latent.config import load_config

        minutes = load_config(str(config_path(name))).train.max_minutes or 10.0
        args += ["--set", f"train.max_minutes={minutes * scale:.3f}"]
    if (out / "runs" / name / "config.yaml").is_file():
        args.append("--resume")  # an interrupted quickstart continues where its checkpoints left off
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    return proc, log


def _last_metric(run: Path) -> str:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return "starting"
    lines = path.read_text().strip().splitlines()
    for line in reversed(lines):
        m = json.loads(line)
        if "train/reward" in m:
            return f"step {m['step']} reward {m['train/reward']:.3f} acc {m['train/accuracy']:.2f}"
        if "train/loss" in m:
            return f"step {m['step']} loss {m['train/loss']:.3f} stage {m.get('train/stage', 0)}"
    return "starting"


def run_phase(names: list[str], out: Path, seed: int, scale: float) -> None:
    jobs = {n: _train_job(n, out, seed, scale) for n in names}
    print(f"training {', '.join(names)} side by side (logs in {out / 'logs'})", flush=True)
    t0 = time.time()
    while any(p.poll() is None for p, _ in jobs.values()):
        time.sleep(15)
        status = "; ".join(f"{n}: {_last_metric(out / 'runs' / n)}" for n in names)
        print(f"  [{(time.time() - t0) / 60:4.1f} min] {status}", flush=True)
    for n, (p, log) in jobs.items():
        if p.returncode != 0:
            tail = log.read_text().strip().splitlines()[-5:]
            raise RuntimeError(f"training {n} failed (exit {p.returncode}); see {log}:\n" + "\n".join(tail))


def evaluate_all(names: list[str], out: Path) -> dict[str, dict[str, dict]]:
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import builder_for
    from atp_latent.evaluation.evaluate import evaluate
    from atp_latent.modeling.reasoner import LatentReasoner
    from atp_latent.training.sft import checkpoint_weights

    results: dict[str, dict[str, dict]] = {}
    for name in names:
        model, tok = LatentReasoner.from_pretrained(checkpoint_weights(out / "runs" / name))
        builder = builder_for(tok, model.spec)
        max_new = 160 if name == "cot" else 16
        results[name] = {}
        for split in TEST_SPLITS:
            problems = load_records(out / "data" / f"{split}.jsonl")
            summary, _ = evaluate(model, builder, problems, batch_size=100, max_new_tokens=max_new,
                                  desc=f"{name}/{split}")
            results[name][split] = summary.as_dict()
        acc = sum(r["accuracy"] for r in results[name].values()) / len(TEST_SPLITS)
        print(f"  evaluated {LABELS[name]}: mean accuracy {100 * acc:.1f}%", flush=True)
        del model
    return results


def run_quickstart(args) -> int:
    from atp_latent.evaluation.evaluate import markdown_table

    out = Path(args.out)
    t0 = time.time()
    cfg = SynthConfig(seed=args.seed)
    if not (out / "data" / "train.jsonl").is_file():
        write_benchmark(out / "data", cfg)
    print(f"synthetic benchmark in {out / 'data'}", flush=True)
    scale = 1.0
    if args.minutes:
        scale = args.minutes / 20.0
    names: list[str] = []
    for phase in PHASES:
        todo = [n for n in phase if not (out / "runs" / n / "final" / "reasoner.json").is_file()]
        if todo:
            run_phase(todo, out, args.seed, scale)
        names += phase
    print("evaluating on every synthetic test split", flush=True)
    results = evaluate_all(names, out)
    table = markdown_table({LABELS[n]: results[n] for n in names}, TEST_SPLITS)
    minutes = (time.time() - t0) / 60
    text = (f"# Quickstart results (seed {args.seed})\n\nAccuracy (%) on each synthetic test split; "
            f"# tokens = active latents + answer tokens (CoT: generated steps + answer).\n\n{table}\n\n"
            f"Total time: {minutes:.1f} min.\n")
    (out / "RESULTS.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n" + table + "\n")
    print(f"run directories: {out / 'runs'}  table: {out / 'RESULTS.md'}  ({minutes:.1f} min)")
    return 0
