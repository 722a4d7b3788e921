"""Train a suite's jobs: each a one-thread `atp-latent train` process, at most `slots` at a time, in priority order,
each started once the checkpoint it starts from exists; a job that already finished is skipped, an interrupted one
resumes from its checkpoints. Tiny models train faster as two one-thread processes than as one two-thread process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from atp_latent.jobs import JOB_DATA, STARTS, Suite, config_path
from atp_latent.modeling.methods import is_rl


def _start_job(suite: Suite, job: str, out: Path, seed: int, scale: float, extra: list[str]):
    data, runs = out / "data", out / "runs"
    train, val = JOB_DATA.get(job, ("train.jsonl", "val.jsonl"))
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--config", str(config_path(suite, job)),
            "--output-dir", str(runs), "--name", job, "--set", f"data.train={data / train}",
            "--set", f"data.val={data / val}", "--set", f"train.seed={seed}"]
    if job in STARTS:
        args += ["--set", f"model.init_from={runs / STARTS[job] / 'best' / 'model'}"]
    for s in extra + (_scaled(config_path(suite, job), extra, scale) if scale != 1.0 else []):
        args += ["--set", s]
    if (runs / job / "config.yaml").is_file():
        args.append("--resume")  # an interrupted suite continues where its checkpoints left off
    log = out / "logs" / f"{job}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Output goes to a file: progress comes as a short line every $ATP_PROGRESS_SECONDS (atp_latent.progress)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env), log


def _scaled(path: Path, extra: list[str], scale: float) -> list[str]:
    """--set overrides that make a job `scale` times as long (a trial; the protocol is scale 1): RL steps, or the
    SFT epoch size (so a curriculum keeps its stages) and step cap. The safety stop in minutes scales too."""
    from atp_latent.config import load_config

    cfg = load_config(str(path), extra)
    sets = [f"train.max_minutes={cfg.train.max_minutes * scale:.3f}"] if cfg.train.max_minutes else []
    if is_rl(cfg.method.name):
        return sets + [f"rl.steps={max(1, round(cfg.rl.steps * scale))}"]
    if cfg.data.epoch_size:
        sets.append(f"data.epoch_size={max(cfg.optim.batch_size, round(cfg.data.epoch_size * scale))}")
    if cfg.train.max_steps:
        sets.append(f"train.max_steps={max(1, round(cfg.train.max_steps * scale))}")
    return sets


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


def finished(out: Path, job: str) -> bool:
    return (out / "runs" / job / "final" / "reasoner.json").is_file()


def train_jobs(suite: Suite, tasks: list[tuple[Path, str, int]], scale: float = 1.0, extra: list[str] | None = None,
               slots: int = 2, job_sets: dict[str, list[str]] | None = None) -> int:
    """Train `tasks` ((output folder, job, seed), in priority order), at most `slots` at a time.

    A job starts once the job it starts from (STARTS, same folder) has finished, so the jobs of several seeds
    interleave and no slot idles while a later seed has work ready. Finished jobs are skipped; interrupted ones
    resume from their last checkpoint. `extra`: --set overrides for every job; `job_sets`: more for some jobs (a
    regime's, jobs.regime_sets), before `extra`. Returns how many jobs it trained.
    """
    pending = [t for t in tasks if not finished(t[0], t[1])]
    n_todo = len(pending)
    running: dict[tuple[Path, str, int], tuple[subprocess.Popen, Path]] = {}

    several_seeds = len({seed for _, _, seed in tasks}) > 1

    def name(t):
        return f"{t[1]}@seed-{t[2]}" if several_seeds else t[1]

    t0, last = time.time(), 0.0
    try:
        while pending or running:
            for t, (p, log) in list(running.items()):
                if p.poll() is None:
                    continue
                del running[t]
                if p.returncode != 0:
                    tail = log.read_text().strip().splitlines()[-3:]
                    raise RuntimeError(f"training {name(t)} failed (exit {p.returncode}); see {log}: " + " | ".join(tail))
                print(f"  [{(time.time() - t0) / 60:5.1f} min] {name(t)} finished", flush=True)
            for t in list(pending):
                if len(running) >= slots:
                    break
                out, job, seed = t
                if job in STARTS and not finished(out, STARTS[job]):
                    continue
                pending.remove(t)
                running[t] = _start_job(suite, job, out, seed, scale, (job_sets or {}).get(job, []) + (extra or []))
                print(f"  [{(time.time() - t0) / 60:5.1f} min] {name(t)} started (log {running[t][1]})", flush=True)
            if pending and not running:
                raise RuntimeError("cannot start " + ", ".join(name(t) for t in pending) + ": the checkpoint they "
                                   "start from is missing")
            if time.time() - last > 30 and running:
                last = time.time()
                status = "; ".join(f"{name(t)}: {_status(t[0] / 'runs' / t[1])}" for t in running)
                print(f"  [{(time.time() - t0) / 60:5.1f} min] {status}", flush=True)
            time.sleep(2)
    finally:  # on failure or Ctrl-C stop the others; they resume from their checkpoints next time
        for p, _ in running.values():
            if p.poll() is None:
                p.terminate()
    return n_todo
