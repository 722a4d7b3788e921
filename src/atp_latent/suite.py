"""Train and compare several methods the same way: the quickstart and `atp-latent bench`.

A suite is a folder of configs (configs/<suite>/) and its jobs in priority order. Jobs run two at a time as
one-thread processes (for tiny models two one-thread processes train faster than one two-thread process); a
job starts once the checkpoint it starts from exists (the latent methods from CoT-SFT, RL from ATP SFT; always
the best validation checkpoint). Every model is then evaluated on every synthetic test split with the same
harness, and RL against its SFT start on held-out problems (val_large) only: RL's best/ is picked on val.
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

from atp_latent.data.synthetic import CONFIG_NAME, REGIMES, SynthConfig, write_benchmark
from atp_latent.modeling.methods import METHODS, is_rl

TEST_SPLITS = ["test", "test_large", "test_long", "test_perturbed"]
# A method's job is named after it and labelled by its MethodDef; RL and ablation jobs are labelled here.
LABELS = {**{name: m.label for name, m in METHODS.items()},
          "atp_rl": "ATP-Latent (RL)", "atp_rl_coherence": "ATP-Latent (RL, coherence only)",
          "simcot_codi": "SIM-CoT on CODI", "colar_rl": "CoLaR-RL",
          "atp_no_kl": "ATP SFT, no KL (beta_kl=0)", "atp_no_stop": "ATP SFT, no stop head",
          "atp_no_decoder": "ATP SFT, no decoder",
          "atp_no_decoder_no_kl": "ATP SFT, no decoder, no KL",
          "atp_no_decoder_no_vae": "ATP SFT, no decoder, no VAE (Coconut + stop head)",
          "atp_no_decoder_no_kl_no_stop": "ATP SFT, VAE head only (no decoder, KL, stop head)",
          "atp_no_decoder_no_kl_stop_detached": "ATP SFT, no decoder, no KL, stop loss kept from the LM",
          "atp_no_decoder_no_vae_stop_detached": "Coconut + stop head, stop loss kept from the LM",
          "atp_rl_no_coherence": "ATP RL, coherence weight 0",
          "atp_rl_long": "ATP RL, twice the steps", "atp_no_vae": "ATP SFT, no VAE (z = hidden state)",
          "atp_rl_low_lr": "ATP RL, lr 1e-5", "atp_rl_high_lr": "ATP RL, lr 1e-4",
          "atp_rl_dynamic": "ATP RL, dynamic sampling", "atp_rl_dynamic8": "ATP RL, dynamic sampling, 8x questions",
          "atp_rl_answer_temp05": "ATP RL, answer temperature 0.5",
          "atp_rl_dynamic8_temp05": "ATP RL, dynamic sampling, 8x questions, answer temperature 0.5",
          "atp_rl_latent_mean": "ATP RL, latents at their mean (no Gaussian term)",
          "atp_rl_dynamic8_temp05_latent_mean": "ATP RL, dynamic sampling, 8x questions, answer T 0.5, latents at mean",
          "atp_rl_token_norm": "ATP RL, token-level loss norm",
          "atp_rl_kl": "ATP RL, KL to start 0.1", "atp_rl_logratio_mean": "ATP RL, per-dim latent log-ratio",
          "atp_rl_cosine": "ATP RL, warmup + cosine lr", "atp_rl_group16": "ATP RL, 16 rollouts per question",
          "atp_rl_latent_temp": "ATP RL, latent exploration x3", "atp_rl_heads_only": "ATP RL, heads only",
          "atp_rl_fresh": "ATP RL on fresh in-distribution questions",
          "atp_rl_new_style": "ATP-Latent (RL on new-style questions)",
          "atp_rl_new_style_dynamic": "ATP-Latent (RL on new-style questions, dynamic sampling)"}
RL_KNOBS = ("atp_rl_low_lr", "atp_rl_high_lr", "atp_rl_cosine", "atp_rl_group16", "atp_rl_dynamic",
            "atp_rl_dynamic8", "atp_rl_token_norm", "atp_rl_kl", "atp_rl_logratio_mean", "atp_rl_latent_temp",
            "atp_rl_heads_only", "atp_rl_answer_temp05", "atp_rl_dynamic8_temp05", "atp_rl_latent_mean",
            "atp_rl_dynamic8_temp05_latent_mean")
# Where each job starts from (its best validation checkpoint).
STARTS = {**{name: m.starts_from for name, m in METHODS.items() if m.starts_from},  # a method's job: its MethodDef
          "atp_rl": "atp", "atp_rl_coherence": "atp", "simcot_codi": "cot", "colar_rl": "colar",
          "atp_no_kl": "cot", "atp_no_stop": "cot", "atp_no_decoder": "cot", "atp_no_decoder_no_kl": "cot",
          "atp_no_decoder_no_vae": "cot", "atp_no_decoder_no_kl_no_stop": "cot", "atp_rl_no_coherence": "atp",
          "atp_no_decoder_no_kl_stop_detached": "cot", "atp_no_decoder_no_vae_stop_detached": "cot",
          "atp_rl_long": "atp", "atp_no_vae": "cot", "atp_rl_new_style": "atp", "atp_rl_new_style_dynamic": "atp",
          "atp_rl_fresh": "atp", **{k: "atp" for k in RL_KNOBS}}
# Jobs trained on other data than their seed's train/val splits (paths under the seed folder's data/)
NEW_STYLE_JOBS = ("atp_rl_new_style", "atp_rl_new_style_dynamic")
JOB_DATA = {**{j: ("new_style/train.jsonl", "new_style/val.jsonl") for j in NEW_STYLE_JOBS},
            "atp_rl_fresh": ("fresh/train.jsonl", "val.jsonl")}


# The bench's paired comparisons (first minus second, seed by seed)
PAIRS = [("atp_rl", "simcot"), ("atp_rl", "coconut"), ("atp_rl", "icot"), ("atp_rl", "codi"),
         ("atp_rl", "simcot_codi"), ("atp_rl", "colar"), ("atp_rl", "colar_rl"), ("atp_rl", "atp"),
         ("colar_rl", "colar"),
         ("atp", "simcot"),
         ("atp_rl_coherence", "atp"), ("atp_rl_new_style", "atp"), ("atp_rl_new_style_dynamic", "atp")]


# Held-out problems per seed folder (write_val_large; 0: none) and RL-policy rollouts of each, when the command line
# does not say. RL's best/ is picked on val with its start as the first candidate, so RL is judged against its start
# on these only. The GPU suite draws a few hundred and evaluates them greedily, to fit one device call.
DEFAULT_VAL_LARGE = {"cpu": 5000, "gpu": 500}
# Rollouts per test problem for the reasoning-path diversity tables, by regime (bench --diversity)
DEFAULT_DIVERSITY = {"default": 0, "many-plans": 8}
DEFAULT_ROLLOUTS = {"cpu": 8, "gpu": 0}


@dataclass(frozen=True)
class Suite:
    name: str  # the configs/<name>/ folder
    phases: tuple[tuple[str, ...], ...]  # the jobs, in priority order (a phase's jobs are independent)
    ablations: tuple[str, ...] = ()  # extra jobs for seed 0, evaluated on the val split only

    @property
    def jobs(self) -> list[str]:
        return [j for phase in self.phases for j in phase]


_ALL = (("cot", "nocot"), ("atp", "coconut"), ("simcot", "atp_rl"), ("atp_rl_coherence",))
SUITES = {
    "quickstart": Suite("quickstart", (("cot", "nocot"), ("atp", "coconut"), ("atp_rl",))),
    # the CPU bench also runs RL where its reward knows more than SFT did (write_new_style)
    # and the Table-1 baselines iCoT, CODI, SIM-CoT on CODI and CoLaR (from CoT-SFT, the latent rows' steps), and
    # CoLaR-RL (from CoLaR, ATP-RL's steps).
    "cpu": Suite("cpu", _ALL[:-1] + (("atp_rl_coherence", "atp_rl_new_style", "atp_rl_new_style_dynamic"),
                                       ("icot", "codi", "simcot_codi", "colar"), ("colar_rl",)),
                 ablations=("atp_no_kl", "atp_no_stop", "atp_no_decoder", "atp_no_decoder_no_kl", "atp_no_vae",
                            "atp_no_decoder_no_vae", "atp_no_decoder_no_kl_no_stop", "atp_no_decoder_no_kl_stop_detached",
                            "atp_no_decoder_no_vae_stop_detached", "atp_rl_no_coherence", "atp_rl_long", *RL_KNOBS,
                            "atp_rl_fresh")),
    # one size up for one GPU: a larger model from scratch, same data and protocol (configs/gpu/), the Table-1
    # baselines included; `--jobs` trains a part of it (e.g. the paper's comparison alone in a short GPU session)
    "gpu": Suite("gpu", _ALL + (("icot", "codi", "simcot_codi", "colar"), ("colar_rl",))),
}


def with_starts(jobs: list[str]) -> list[str]:
    """`jobs` and every job they start from (STARTS, transitively), in the order given, starts first."""
    out: list[str] = []

    def add(job):
        if job in out:
            return
        if STARTS.get(job):
            add(STARTS[job])
        out.append(job)

    for job in jobs:
        add(job)
    return out


def subset(suite: Suite, jobs: list[str]) -> Suite:
    """The suite restricted to `jobs` and what they start from (bench --jobs); unknown jobs are refused in one line."""
    unknown = [j for j in jobs if j not in suite.jobs]
    if unknown:
        raise ValueError(f"suite {suite.name!r} has no job {', '.join(map(repr, unknown))} "
                         f"(its jobs: {', '.join(suite.jobs)})")
    keep = set(with_starts(jobs))
    phases = tuple(p for p in (tuple(j for j in phase if j in keep) for phase in suite.phases) if p)
    return Suite(suite.name, phases, suite.ablations)


def config_path(suite: Suite, job: str) -> Path:
    return Path(str(resources.files("atp_latent") / "configs" / suite.name / f"{job}.yaml"))


def _label(job: str) -> str:
    return LABELS.get(job, job)


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


def _done(out: Path, job: str) -> bool:
    return (out / "runs" / job / "final" / "reasoner.json").is_file()


def train_jobs(suite: Suite, tasks: list[tuple[Path, str, int]], scale: float = 1.0, extra: list[str] | None = None,
               slots: int = 2) -> int:
    """Train `tasks` ((output folder, job, seed), in priority order), at most `slots` at a time.

    A job starts once the job it starts from (STARTS, same folder) has finished, so the jobs of several seeds
    interleave and no slot idles while a later seed has work ready. Finished jobs are skipped; interrupted ones
    resume from their last checkpoint. Returns how many jobs it trained.
    """
    pending = [t for t in tasks if not _done(t[0], t[1])]
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
                if job in STARTS and not _done(out, STARTS[job]):
                    continue
                pending.remove(t)
                running[t] = _start_job(suite, job, out, seed, scale, extra or [])
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


def _cached(run: Path, name: str, compute, *args, valid=None):
    """An evaluation of a finished run, kept beside it (run/name) and reused while final/ is unchanged and `valid`
    accepts it (so a figure added later, or a redrawn split, is computed once): evaluation is deterministic, so
    re-running a bench only evaluates the runs that changed."""
    path, final = run / name, run / "final" / "reasoner.json"
    if path.is_file() and final.is_file() and path.stat().st_mtime >= final.stat().st_mtime:
        value = json.loads(path.read_text())
        if valid is None or valid(value):
            return value
    value = compute(*args)
    path.write_text(json.dumps(value))
    return value


def evaluate_jobs(jobs: list[str], out: Path, batch_size: int = 100) -> tuple[dict, dict]:
    """Every job's best checkpoint on every test split. Returns (summaries, each with "correct": a string of 0/1 per
    problem in the split file's order; per-problem latent counts)."""
    from atp_latent.data.formats import load_records
    from atp_latent.evaluation.evaluate import default_max_new_tokens, evaluate, load_for_eval
    from atp_latent.progress import quiet_library_bars

    quiet_library_bars()

    def run_job(job):
        model, _, builder = load_for_eval(out / "runs" / job)
        max_new = default_max_new_tokens(model.spec.method)
        res, lat = {}, []
        for split in TEST_SPLITS:
            problems = load_records(out / "data" / f"{split}.jsonl")
            summary, rows = evaluate(model, builder, problems, batch_size=batch_size, max_new_tokens=max_new,
                                     desc=f"{job}/{split}")
            # which problems it got right, in the file's order: the paired analysis over problems and seeds needs them
            res[split] = summary.as_dict() | {"correct": "".join("1" if r["correct"] else "0" for r in rows)}
            lat += [r["latents"] for r in rows]
        return {"results": res, "latents": lat}

    results: dict[str, dict[str, dict]] = {}
    latents: dict[str, list[int]] = {}
    for job in jobs:
        cached = _cached(out / "runs" / job, "test_eval.json", run_job, job,
                         valid=lambda v: all("correct" in r for r in v["results"].values()))
        results[job], latents[job] = cached["results"], cached["latents"]
        acc = sum(r["accuracy"] for r in results[job].values()) / len(TEST_SPLITS)
        print(f"  evaluated {_label(job)}: mean accuracy {100 * acc:.1f}%", flush=True)
    return results, latents


def regime_config(regime: str, data_seed: int = 0) -> SynthConfig:
    """The synthetic benchmark of a named regime (data/synthetic.py REGIMES)."""
    if regime == "default":
        return SynthConfig(seed=data_seed)
    if regime == "many-plans":
        return SynthConfig.many_plans(seed=data_seed)
    raise ValueError(f"unknown regime {regime!r} (known: {', '.join(REGIMES)})")


def write_data(out: Path, data_seed: int = 0, regime: str = "default") -> None:
    """The synthetic benchmark every method of a seed folder shares (kept when already there, if it was drawn with
    the same settings: a seed folder never mixes regimes)."""
    import dataclasses

    cfg = regime_config(regime, data_seed)
    written = out / "data" / CONFIG_NAME
    if (out / "data" / "train.jsonl").is_file():
        if written.is_file():  # a knob added after the data was written had its default then
            default = json.loads(json.dumps(dataclasses.asdict(SynthConfig(seed=data_seed))))
            have = default | json.loads(written.read_text())
            want = json.loads(json.dumps(dataclasses.asdict(cfg)))
            sizes = ("n_train", "n_val", "n_test", "n_ood")  # a smaller draw of the same regime is the same regime
            if {k: have.get(k) for k in want if k not in sizes} != {k: v for k, v in want.items() if k not in sizes}:
                raise ValueError(f"{out / 'data'} holds data drawn with other settings than regime {regime!r} "
                                 f"(data seed {data_seed}); use another --out")
        return
    write_benchmark(out / "data", cfg)


def write_new_style(out: Path, data_seed: int = 0, n_train: int = 4800, n_val: int = 200) -> None:
    """data/new_style/{train,val}.jsonl: questions in test_perturbed's style (reworded sentences, a distractor,
    half of them reordered), which no SFT run sees, drawn with data seed `data_seed` + 101 and kept only when their
    text is in none of the seed folder's splits. `atp_rl_new_style` trains on them: RL whose reward (the answer)
    carries what SFT's targets did not (docs/experiment-log.md). Kept when already there."""
    from atp_latent.data.formats import load_records, write_jsonl
    from atp_latent.data.synthetic import SPLITS, generate_benchmark

    folder = out / "data" / "new_style"
    if (folder / "val.jsonl").is_file():
        return
    taken = {r.question for split in SPLITS for r in load_records(out / "data" / f"{split}.jsonl")}
    drawn = generate_benchmark(SynthConfig(seed=data_seed + 101, n_train=10, n_val=10, n_test=10,
                                           n_ood=n_train + n_val))["test_perturbed"]
    fresh = [p for p in drawn if p.question not in taken]
    if len(fresh) < n_train + n_val:
        raise ValueError(f"only {len(fresh)} new-style questions are disjoint from {out / 'data'}")
    write_jsonl(folder / "train.jsonl", fresh[:n_train])
    write_jsonl(folder / "val.jsonl", fresh[n_train:n_train + n_val])


def _draw_in_distribution(out: Path, seed: int, n: int, avoid: tuple[str, ...] = ()) -> list:
    """`n` in-distribution problems drawn like val with data seed `seed`, kept only when their text is in none of the
    seed folder's splits nor in the files `avoid` (paths under its data/)."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.synthetic import SPLITS, generate_benchmark

    data = out / "data"
    files = [data / f"{split}.jsonl" for split in SPLITS] + [data / a for a in avoid if (data / a).is_file()]
    taken = {r.question for f in files for r in load_records(f)}
    drawn = generate_benchmark(SynthConfig(seed=seed, n_train=10, n_val=n + n // 10 + 10, n_test=10,
                                           n_ood=10))["val"]
    fresh = [p for p in drawn if p.question not in taken]
    if len(fresh) < n:
        raise ValueError(f"only {len(fresh)} in-distribution questions are disjoint from {data}")
    return fresh[:n]


def write_val_large(out: Path, data_seed: int = 0, n: int = 5000) -> Path:
    """data/val_large.jsonl: `n` in-distribution problems drawn like val (data seed `data_seed` + 202) and kept only
    when their text is in none of the seed folder's splits. No run selects anything on them: they measure RL's
    gain over its SFT start with power (on 300 val problems one problem is 0.33 points). Kept when already there."""
    from atp_latent.data.formats import write_jsonl

    path = out / "data" / "val_large.jsonl"
    if path.is_file() and len(path.read_text().splitlines()) == n:
        return path
    write_jsonl(path, _draw_in_distribution(out, data_seed + 202, n))
    return path


def write_fresh(out: Path, data_seed: int = 0, n: int = 4800) -> Path:
    """data/fresh/train.jsonl: `n` in-distribution questions no SFT run saw (data seed `data_seed` + 303; disjoint
    from every split and from val_large). `atp_rl_fresh` runs atp_rl's recipe on these instead of the SFT questions,
    to tell whether RL learns nothing only because SFT was trained on its questions (docs/experiment-log.md). Kept when
    there."""
    from atp_latent.data.formats import write_jsonl

    path = out / "data" / "fresh" / "train.jsonl"
    if path.is_file() and len(path.read_text().splitlines()) == n:
        return path
    write_jsonl(path, _draw_in_distribution(out, data_seed + 303, n, avoid=("val_large.jsonl",)))
    return path


def evaluate_seed(jobs: list[str], out: Path, seed: int) -> tuple[dict, dict]:
    """evaluate_jobs for one seed folder, also written to its results.json."""
    results, latents = evaluate_jobs(jobs, out)
    (out / "results.json").write_text(json.dumps({"seed": seed, "results": results, "latents": latents}, indent=2))
    return results, latents


def run_suite(suite: Suite, out: Path, seed: int = 0, scale: float = 1.0, data_seed: int = 0,
              extra: list[str] | None = None) -> dict:
    """Data (shared by every method), the training jobs, the evaluation. Returns results[job][split]."""
    write_data(out, data_seed)
    print(f"synthetic benchmark in {out / 'data'}", flush=True)
    train_jobs(suite, [(out, j, seed) for j in suite.jobs], scale, extra)
    print("evaluating on every synthetic test split", flush=True)
    return evaluate_seed(suite.jobs, out, seed)[0]


def run_quickstart(args) -> int:
    from atp_latent.evaluation.evaluate import markdown_table
    from atp_latent.evaluation.report import stopped_early_note

    out = Path(args.out)
    t0 = time.time()
    suite = SUITES["quickstart"]
    results = run_suite(suite, out, seed=args.seed, scale=args.scale, extra=args.overrides)
    table = markdown_table({_label(j): results[j] for j in suite.jobs}, TEST_SPLITS)
    minutes = (time.time() - t0) / 60
    warning = stopped_early_note({_label(j): out / "runs" / j for j in suite.jobs})
    (out / "RESULTS.md").write_text(
        f"# Quickstart results (seed {args.seed})\n\nAccuracy (%) on each synthetic test split; # tokens = active "
        f"latents + answer tokens (CoT: generated steps + answer).\n\n{table}\n\nTotal time: {minutes:.1f} min.\n"
        + (f"\n{warning}\n" if warning else ""))
    print("\n" + table + "\n" + (f"\n{warning}\n" if warning else ""))
    print(f"run directories: {out / 'runs'}  table: {out / 'RESULTS.md'}  ({minutes:.1f} min)")
    return 0


def accuracy_by_steps(problems, rows: list[dict]) -> dict[str, dict]:
    """Greedy accuracy and mean latents per number of solution steps ({"2": {"n", "accuracy", "latents"}, ...}):
    where an ablation loses, e.g. a fixed number of latents costs only the problems that need them all."""
    groups: dict[int, list[dict]] = {}
    for p, r in zip(problems, rows, strict=True):
        groups.setdefault(len(p.steps), []).append(r)
    return {str(k): {"n": len(g), "accuracy": sum(r["correct"] for r in g) / len(g),
                     "latents": sum(r["latents"] for r in g) / len(g)} for k, g in sorted(groups.items())}


def evaluate_val(jobs: list[str], out: Path, samples: int = 3, batch_size: int = 100, split: str = "val",
                 rollouts: int = 0) -> dict:
    """Models on the val split only (never the test splits; `split` "val_large": write_val_large's sample): greedy,
    with which problems each got right ("correct": a string of 0/1 in the file's order), plus the latent methods
    with latents sampled from the VAE head (`samples` draws, mean and std) and, with `rollouts` n, n samples of each
    problem from RL's rollout policy (rollout_summary). Cached beside each run."""
    from atp_latent.data.formats import load_records
    from atp_latent.evaluation.evaluate import (
        default_max_new_tokens,
        evaluate,
        load_for_eval,
        mean_std,
        rollout_policy,
    )
    from atp_latent.progress import quiet_library_bars

    quiet_library_bars()

    problems = load_records(out / "data" / f"{split}.jsonl")

    def run_job(job):
        model, _, builder = load_for_eval(out / "runs" / job)
        max_new = default_max_new_tokens(model.spec.method)
        summary, per_problem = evaluate(model, builder, problems, batch_size=batch_size, max_new_tokens=max_new,
                                        progress=False)
        row = summary.as_dict()
        row["by_steps"] = accuracy_by_steps(problems, per_problem)
        row["correct"] = "".join("1" if r["correct"] else "0" for r in per_problem)
        if model.spec.use_vae and samples:
            accs = [evaluate(model, builder, problems, batch_size=batch_size, max_new_tokens=max_new,
                             sample_latents=True, seed=k, progress=False)[0].accuracy for k in range(samples)]
            row["sampled_accuracy"], row["sampled_accuracy_std"] = mean_std(accs)
        if model.spec.use_vae and rollouts:
            row["rollout"] = rollout_summary([
                evaluate(model, builder, problems, batch_size=batch_size, max_new_tokens=max_new, seed=k,
                         progress=False, **rollout_policy())[1]
                for k in range(rollouts)])
        return row

    def valid(v):
        return "by_steps" in v and len(v.get("correct", "")) == len(problems) \
            and (not rollouts or v.get("rollout", {}).get("n") == rollouts)

    rows: dict[str, dict] = {}
    for job in jobs:
        rows[job] = _cached(out / "runs" / job, f"{split}_eval.json", run_job, job, valid=valid)
        print(f"  {split} {_label(job)}: {100 * rows[job]['accuracy']:.1f}%", flush=True)
    return rows


def diversity_curves(problems, samples: list[list[dict]]) -> dict:
    """The diversity of n sampled rollouts of each problem (samples[k][i]: sample k of problem i, with its "plan"):
    evaluation/diversity.py's summary of all n, the coverage and (strict) pass@k of the first k for k = 1, 2, 4, ...
    n, and each problem's coverage and plan validity at n (so two methods can be paired problem by problem)."""
    from atp_latent.data.synthetic import valid_orders
    from atp_latent.evaluation.diversity import ProblemRollouts, coverage, diversity_summary, plan_validity

    orders = [valid_orders(p) for p in problems]

    def at(k):
        return [ProblemRollouts(v, [(s[i].get("plan"), s[i]["correct"]) for s in samples[:k]])
                for i, v in enumerate(orders)]

    n = len(samples)
    ks = sorted({2 ** j for j in range(n.bit_length()) if 2 ** j <= n} | {n})
    full = at(n)
    out = diversity_summary(full)
    if out["has_plans"]:
        out["coverage_at_k"] = {str(k): diversity_summary(at(k))["coverage"] for k in ks}
        out["per_problem"] = {"coverage": [coverage(*p) for p in full],
                              "validity": [plan_validity(*p).validity for p in full]}
    return out


def evaluate_diversity(jobs: list[str], out: Path, samples: int = 8, split: str = "test", batch_size: int = 100
                       ) -> dict:
    """Reasoning-path diversity of each job on `split`: `samples` rollouts of every problem under RL's rollout policy,
    the same for every method (latents sampled from the VAE head where there is one, the stop head sampled, answer
    tokens at temperature 1.0; a method whose latents are deterministic, e.g. Coconut or SIM-CoT, varies only in its
    answers, and CoT in the text it writes), each rollout's plan read by evaluation/plans.py (diversity_curves).
    Cached beside each run."""
    from atp_latent.data.formats import load_records
    from atp_latent.evaluation.evaluate import default_max_new_tokens, evaluate, load_for_eval, rollout_policy
    from atp_latent.progress import quiet_library_bars

    quiet_library_bars()
    problems = load_records(out / "data" / f"{split}.jsonl")

    def run_job(job):
        model, _, builder = load_for_eval(out / "runs" / job)
        max_new = default_max_new_tokens(model.spec.method)
        runs = [evaluate(model, builder, problems, batch_size=batch_size, max_new_tokens=max_new, seed=k,
                         progress=False, plans=True, **rollout_policy())[1] for k in range(samples)]
        return diversity_curves(problems, runs)

    rows = {}
    for job in jobs:
        rows[job] = _cached(out / "runs" / job, f"{split}_diversity.json", run_job, job,
                            valid=lambda v: v.get("n_rollouts") == samples and v.get("n_problems") == len(problems))
        print(f"  {split} diversity {_label(job)}: coverage {rows[job].get('coverage')}", flush=True)
    return rows


def rollout_summary(samples: list[list[dict]]) -> dict:
    """n samples of each problem from RL's rollout policy (samples[k][i]: sample k of problem i): their accuracy
    (pass@1), pass@k, and the share of problems whose n answers are not all right or all wrong, i.e. the share of
    GRPO groups of n rollouts with which the accuracy reward would carry a signal."""
    from atp_latent.evaluation.evaluate import pass_at_ks, right_counts

    n, right = len(samples), right_counts(samples)
    return {"n": n, "accuracy": sum(right) / (n * len(right)), "pass_at_k": pass_at_ks(right, n),
            "signal": sum(0 < c < n for c in right) / len(right)}


def rollout_table(rows_per_seed: list[dict]) -> str:
    """Greedy accuracy beside RL's own sampling policy (evaluate_val rows with "rollout"), mean ± std over seeds."""
    from atp_latent.evaluation.evaluate import mean_std

    jobs = [j for j in rows_per_seed[0] if all("rollout" in r.get(j, {}) for r in rows_per_seed)]
    if not jobs:
        return ""
    n = rows_per_seed[0][jobs[0]]["rollout"]["n"]
    lines = [f"| model | greedy | rollouts: accuracy (pass@1) | pass@{n} | groups of {n} with a signal |",
             "|---|---|---|---|---|"]

    def cell(xs):
        m, sd = mean_std(xs)
        return f"{100 * m:.2f} ± {100 * sd:.2f}"

    for j in jobs:
        ro = [r[j]["rollout"] for r in rows_per_seed]
        lines.append(f"| {_label(j)} | {cell([r[j]['accuracy'] for r in rows_per_seed])} | "
                     f"{cell([x['accuracy'] for x in ro])} | {cell([x['pass_at_k'][str(n)] for x in ro])} | "
                     f"{cell([x['signal'] for x in ro])} |")
    return "\n".join(lines)


def evaluate_ablations(suite: Suite, out: Path, samples: int = 3, batch_size: int = 100) -> dict:
    """Seed 0's models and the ablations on the val split (evaluate_val)."""
    return evaluate_val(suite.jobs + list(suite.ablations), out, samples, batch_size)


def gained_lost(row: dict, start: dict) -> tuple[int, int]:
    """Paired, problem by problem (evaluate_val rows with "correct"): how many `start` got wrong and `row` right,
    and the reverse."""
    from atp_latent.training.rl import compare_to_start

    gained, lost, _ = compare_to_start([c == "1" for c in start["correct"]], [c == "1" for c in row["correct"]])
    return gained, lost


def rl_vs_start_table(val_rows: list[dict], digits: int = 1, *, split: str, held_out: bool) -> tuple[str, dict]:
    """Accuracy of each RL job against its SFT start (atp) on `split`, seed by seed (evaluate_val rows), with which
    problems each got right ("correct", per seed): the claim "RL improves on its start" holds when the paired
    bootstrap interval of the gain over problems and seeds lies above 0 (rl_gain_interval). `held_out`: no run
    selected anything on `split`. On the split RL's best/ was picked on (val) the start is best/'s first candidate,
    so the gain there cannot be negative: the table then gives no verdict. Returns the table and its summary
    (rl_vs_start_markdown renders one)."""
    from atp_latent.evaluation.evaluate import mean_std

    start = [r["atp"]["accuracy"] for r in val_rows if "atp" in r]
    s_mean, s_std = mean_std(start)
    summary = {"split": split, "held_out": held_out, "atp": {"per_seed": start, "mean": s_mean, "std": s_std}}
    if val_rows and all("correct" in r.get("atp", {}) for r in val_rows):
        summary["n_problems"] = len(val_rows[0]["atp"]["correct"])
        summary["atp"]["correct"] = [r["atp"]["correct"] for r in val_rows]
    for job in ("atp", "atp_rl", "atp_rl_coherence"):
        if not all(job in r and "atp" in r for r in val_rows):
            continue
        accs = [r[job]["accuracy"] for r in val_rows]
        gains = [a - b for a, b in zip(accs, start)]
        m, sd = mean_std(accs)
        g, g_sd = mean_std(gains)
        summary[job] = {"per_seed": accs, "mean": m, "std": sd, "gains": gains, "mean_gain": g, "gain_std": g_sd}
        if all("correct" in r[job] and "correct" in r["atp"] for r in val_rows):
            summary[job]["gained_lost"] = [gained_lost(r[job], r["atp"]) for r in val_rows]
            summary[job]["correct"] = [r[job]["correct"] for r in val_rows]
    return rl_vs_start_markdown(summary, digits), summary


def rl_gain_interval(summary: dict, job: str, start: str = "atp"):
    """(PairedBootstrapResult of `job` minus `start` over the summary's problems and seeds, a note) or (None, "").
    From each seed's per-problem outcomes ("correct"); a results file from before they were kept has only how many
    problems each seed gained and lost: each seed's per-problem differences are then rebuilt from those counts, in
    the same order on every seed (gained first, then lost), which can only widen the interval (the note says so)."""
    from atp_latent.evaluation.stats import paired_bootstrap

    row, base = summary.get(job, {}), summary.get(start, {})
    if job == start or not row:
        return None, ""
    if row.get("correct") and base.get("correct"):
        return paired_bootstrap([[int(c) for c in x] for x in row["correct"]],
                                [[int(c) for c in x] for x in base["correct"]]), ""
    counts, n = row.get("gained_lost"), summary.get("n_problems")
    if not counts or not n:
        return None, ""
    a = [[1] * g + [0] * lost + [0] * (n - g - lost) for g, lost in counts]
    b = [[0] * g + [1] * lost + [0] * (n - g - lost) for g, lost in counts]
    return paired_bootstrap(a, b), ("; per-problem outcomes not kept in this results file: rebuilt from each seed's "
                                    "problems gained and lost, aligned across seeds, which can only widen the interval")


def rl_vs_start_markdown(summary: dict, digits: int = 1) -> str:
    """rl_vs_start_table's table from its summary (also one read back from results.json, which may predate
    gain_std and the split fields: a summary without "held_out" is of val, where RL's best/ was picked)."""
    from atp_latent.evaluation.evaluate import mean_std
    from atp_latent.evaluation.report import interval_text

    held_out = summary.get("held_out", False)
    lines = ["| model | acc per seed | mean ± std | gain over ATP SFT per seed | mean gain, 95% interval, p | "
             "interval above 0? | problems gained / lost per seed |", "|---|---|---|---|---|---|---|"]
    for job in ("atp", "atp_rl", "atp_rl_coherence"):
        if job not in summary or "gains" not in summary[job]:
            continue
        row = summary[job]
        accs, gains = row["per_seed"], row["gains"]
        g = mean_std(gains)[0]
        res, _ = rl_gain_interval(summary, job)
        if job == "atp":
            interval = verdict = "-"
        elif res is None:
            interval, verdict = f"{100 * g:+.{digits}f} (no per-problem outcomes)", "-"
        else:
            interval = interval_text(res, digits)
            verdict = ("yes" if res.ci_low > 0 else "no") if held_out else "selection split"  # picked here: none
        flips = row.get("gained_lost")
        flip_text = "-" if flips is None or job == "atp" else ", ".join(f"+{a} / -{b}" for a, b in flips)
        f = f".{digits}f"  # points; 2 digits where one problem is worth less than 0.1
        lines.append(f"| {_label(job)} | " + ", ".join(f"{100 * a:{f}}" for a in accs) + f" | {100 * row['mean']:{f}}"
                     f" ± {100 * row['std']:{f}} | " + ", ".join(f"{100 * x:+{f}}" for x in gains) + f" | "
                     f"{interval} | {verdict} | {flip_text} |")
    return "\n".join(lines)


def picked_on_val(jobs) -> list[str]:
    """The RL jobs whose best/ was picked on the seed's val split with their start (atp) as first candidate."""
    return [j for j in jobs if STARTS.get(j) == "atp" and JOB_DATA.get(j, ("", "val.jsonl"))[1] == "val.jsonl"]


def ablation_table(rows: dict, picked_here=()) -> str:
    """Seed 0's models on val (evaluate_val rows); the jobs in `picked_here` (picked_on_val) are labelled: their
    best/ was picked on this split, so they cannot score below their start on it."""
    lines = ["| model (seed 0) | val acc, greedy | val acc, sampled latents | # tokens | latents | val acc (latents) by "
             "# steps |", "|---|---|---|---|---|---|"]
    for job, r in rows.items():
        label = _label(job) + (" (best/ picked on this split)" if job in picked_here else "")
        sampled = (f"{100 * r['sampled_accuracy']:.1f} ± {100 * r['sampled_accuracy_std']:.1f}"
                   if "sampled_accuracy" in r else "-")
        by = "; ".join(f"{k}: {100 * g['accuracy']:.1f} ({g['latents']:.2f})" for k, g in r.get("by_steps", {}).items())
        lines.append(f"| {label} | {100 * r['accuracy']:.1f} | {sampled} | {r['mean_tokens']:.1f} | "
                     f"{r['mean_latents']:.1f} | {by or '-'} |")
    return "\n".join(lines)


def gain_table(rows: dict, start: str = "atp") -> str:
    """Each model against `start` on the same problems (rows: evaluate_val's, with "correct"): accuracy, the gain,
    and the problems it gained (start wrong, it right) and lost."""
    base = rows[start]
    lines = ["| model (seed 0) | acc | gain over " + _label(start) + " | problems gained / lost |", "|---|---|---|---|"]
    for job, r in rows.items():
        gained, lost = gained_lost(r, base)
        gain = "-" if job == start else f"{100 * (r['accuracy'] - base['accuracy']):+.2f}"
        flips = "-" if job == start else f"+{gained} / -{lost}"
        lines.append(f"| {_label(job)} | {100 * r['accuracy']:.2f} | {gain} | {flips} |")
    return "\n".join(lines)


def run_bench(args) -> int:
    """`atp-latent bench --suite cpu --seeds N [--ablations]`: every job of every seed on one two-slot schedule,
    then each seed evaluated on the test splits, RL and its start on val and on held-out problems (val_large), the
    ablations on seed 0's val split; results.json, then RESULTS.md rendered from it (bench_report) and plots."""
    from atp_latent.evaluation.report import (
        aggregate,
        plot_accuracy_vs_tokens,
        plot_latents,
        plot_training_curves,
        results_table,
        run_cost,
    )

    if args.suite not in SUITES:
        raise ValueError(f"unknown suite {args.suite!r} (known: {', '.join(SUITES)})")
    suite, out = SUITES[args.suite], Path(args.out)
    if getattr(args, "jobs", None):
        suite = subset(suite, args.jobs)
    if args.ablations and not suite.ablations:
        raise ValueError(f"suite {args.suite!r} has no ablations")
    t0 = time.time()
    default_val_large = DEFAULT_VAL_LARGE.get(args.suite, 0)
    if getattr(args, "val_large", None) is None:
        args.val_large = default_val_large
    default_rollouts = DEFAULT_ROLLOUTS.get(args.suite, 0) if args.val_large else 0
    if getattr(args, "rollouts", None) is None:
        args.rollouts = default_rollouts
    seed_dirs = [out / f"seed-{seed}" for seed in range(args.seeds)]
    regime = getattr(args, "regime", "default")
    for d in seed_dirs:
        write_data(d, args.data_seed, regime)
        if any(j in NEW_STYLE_JOBS for j in suite.jobs):
            write_new_style(d, args.data_seed)
        if args.val_large and "atp_rl" in suite.jobs:
            write_val_large(d, args.data_seed, args.val_large)
    if args.ablations and "atp_rl_fresh" in suite.ablations:
        write_fresh(seed_dirs[0], args.data_seed)  # after val_large, which it avoids
    tasks = [(d, j, seed) for seed, d in enumerate(seed_dirs) for j in suite.jobs]
    if args.ablations:
        tasks += [(seed_dirs[0], j, 0) for j in suite.ablations]
    print(f"training {len(tasks)} jobs, two at a time (logs in {out}/seed-*/logs)", flush=True)
    trained = train_jobs(suite, tasks, args.scale, args.overrides, slots=args.slots)
    per_seed, latents = [], {j: [] for j in suite.jobs}
    for seed, d in enumerate(seed_dirs):
        print(f"evaluating seed {seed} on every synthetic test split", flush=True)
        results, lat = evaluate_seed(suite.jobs, d, seed)
        per_seed.append(results)
        for j in suite.jobs:
            latents[j] += lat[j]
    print("evaluating the RL runs and their SFT start on the val split (where RL's best/ was picked)", flush=True)
    start_and_rl = [j for j in ("atp", "atp_rl", "atp_rl_coherence") if j in suite.jobs]
    val_rows = [evaluate_val(start_and_rl, d) for d in seed_dirs] if "atp" in start_and_rl else []
    rl_summary = rl_vs_start_table(val_rows, split="val", held_out=False)[1] if val_rows else None
    large_summary = rollouts_summary = None
    if args.val_large and "atp_rl" in suite.jobs:
        print(f"evaluating the same on {args.val_large} held-out in-distribution problems (val_large)", flush=True)
        large_rows = [evaluate_val(start_and_rl, d, samples=0, split="val_large", rollouts=args.rollouts)
                      for d in seed_dirs]
        large_summary = rl_vs_start_table(large_rows, digits=2, split="val_large", held_out=True)[1]
        rollouts_summary = {j: [r[j]["rollout"] for r in large_rows] for j in start_and_rl
                            if all("rollout" in r.get(j, {}) for r in large_rows)} or None
    diversity = None
    if getattr(args, "diversity", None) is None:
        args.diversity = DEFAULT_DIVERSITY.get(regime, 0)
    if args.diversity:
        print(f"sampling {args.diversity} rollouts of every test problem for the plans' diversity", flush=True)
        per = [evaluate_diversity(suite.jobs, d, samples=args.diversity) for d in seed_dirs]
        diversity = {j: [p[j] for p in per] for j in suite.jobs}
    ablations = ablations_large = None
    if args.ablations:
        print("evaluating seed 0 and the ablations on the val split", flush=True)
        ablations = evaluate_ablations(suite, seed_dirs[0])
        rl_jobs = [j for j in suite.jobs + list(suite.ablations)
                   if STARTS.get(j) == "atp" and j not in NEW_STYLE_JOBS]
        if args.val_large and rl_jobs:
            print("evaluating seed 0's RL runs on val_large", flush=True)
            ablations_large = evaluate_val(["atp"] + rl_jobs, seed_dirs[0], samples=0, split="val_large")
    agg = aggregate(per_seed)
    costs = {j: [run_cost(d / "runs" / j) for d in seed_dirs] for j in suite.jobs}
    ablation_costs = {j: run_cost(seed_dirs[0] / "runs" / j) for j in (suite.ablations if args.ablations else ())}
    plot_accuracy_vs_tokens(agg, per_seed, TEST_SPLITS, LABELS, out / "accuracy_vs_tokens.png")
    curves = {j: [d / "runs" / j for d in seed_dirs] for j in suite.jobs}
    curves.update({j: [seed_dirs[0] / "runs" / j] for j in (suite.ablations if args.ablations else ())})
    plot_training_curves(curves, LABELS, out / "training_curves.png")
    plot_latents(latents, LABELS, out / "latents_used.png")
    if diversity:
        from atp_latent.evaluation.report import plot_diversity

        plot_diversity({j: v for j, v in diversity.items()}, LABELS, out / "diversity.png")
    command = " ".join(["atp-latent", "bench", "--suite", args.suite, "--seeds", str(args.seeds)]
                       + (["--scale", str(args.scale)] if args.scale != 1.0 else [])
                       + [f"--set {o}" for o in args.overrides]
                       + (["--val-large", str(args.val_large)] if args.val_large != default_val_large else [])
                       + (["--rollouts", str(args.rollouts)] if args.rollouts != default_rollouts else [])
                       + (["--ablations"] if args.ablations else [])
                       + (["--jobs", ",".join(args.jobs)] if getattr(args, "jobs", None) else [])
                       + (["--regime", regime] if regime != "default" else [])
                       + (["--diversity", str(args.diversity)]
                          if args.diversity != DEFAULT_DIVERSITY.get(regime, 0) else []) + ["--out", str(out)])
    data = {"command": command, "suite": args.suite, "regime": regime, "seeds": args.seeds, "val_large": args.val_large,
            "rollouts": args.rollouts, "splits": TEST_SPLITS, "mean": agg, "per_seed": per_seed, "costs": costs,
            "ablation_costs": ablation_costs, "rl_vs_start_val": rl_summary, "rl_vs_start_val_large": large_summary,
            "claim": None, "rollouts_val_large": rollouts_summary, "diversity": diversity, "ablations_val": ablations,
            "ablations_val_large": ablations_large}
    minutes = (time.time() - t0) / 60
    took = f"{minutes:.0f} min on this machine"
    if trained < len(tasks):
        took += (f" for this invocation, which trained {trained} of the {len(tasks)} runs and reused the others, "
                 "finished by an earlier invocation of the same command")
    text, data["claim"] = bench_report(data, took)
    (out / "results.json").write_text(json.dumps(data, indent=2))
    warning = _stopped_early(data)
    if warning:
        print(warning, flush=True)
    (out / "RESULTS.md").write_text(text)
    print("\n" + results_table(agg, per_seed, TEST_SPLITS, LABELS, costs) + f"\n\nwrote {out / 'RESULTS.md'} "
          f"({minutes:.0f} min)")
    return 0


def _bench_settings(data: dict) -> tuple[str, int, int]:
    """The suite, held-out problems per seed and rollouts of a bench's results.json (older files name them only in
    their command line, which leaves out the suite's defaults)."""
    words = data["command"].split()

    def flag(name, default):
        return words[words.index(name) + 1] if name in words else default

    suite = data.get("suite", flag("--suite", "cpu"))
    val_large = data.get("val_large", int(flag("--val-large", DEFAULT_VAL_LARGE.get(suite, 0))))
    rollouts = data.get("rollouts", int(flag("--rollouts", DEFAULT_ROLLOUTS.get(suite, 0) if val_large else 0)))
    return suite, val_large, rollouts


def _stopped_early(data: dict) -> str:
    from atp_latent.evaluation.report import stopped_early_text

    seeds = range(data["seeds"])
    costs = {f"{_label(j)} seed {k}": data["costs"][j][k] for k in seeds for j in data["costs"]}
    costs |= {f"{_label(j)} seed 0": c for j, c in (data.get("ablation_costs") or {}).items()}
    return stopped_early_text(costs)


def bench_report(data: dict, took: str) -> tuple[str, dict]:
    """RESULTS.md (without the notes) from a bench's results.json, and the claim's facts. `took`: what the command
    cost, for the opening line. RL is judged against its start on the held-out problems (val_large) only; the val
    tables are labelled as the split RL's best/ was picked on."""
    from atp_latent.evaluation.report import claim_verdict, compute_summary, paired_table, results_table

    suite, val_large, rollouts = _bench_settings(data)
    per_seed, seeds = data["per_seed"], data["seeds"]
    table = results_table(data["mean"], per_seed, TEST_SPLITS, LABELS, data["costs"])
    paired = paired_table(per_seed, PAIRS, TEST_SPLITS, LABELS)
    val = {"held_out": False, "split": "val"} | data["rl_vs_start_val"] if data.get("rl_vs_start_val") else None
    large = data.get("rl_vs_start_val_large")
    large = {"held_out": True, "split": "val_large", "n_problems": val_large} | large if large else None
    where = f"{val_large} fresh in-distribution problems (`val_large`, held out: no run selected on them)"
    claim_text, claim = claim_verdict(per_seed, TEST_SPLITS, LABELS, rl_vs_start=large, where=where)
    rollouts_text = ""
    if data.get("rollouts_val_large") and large:
        ro = data["rollouts_val_large"]
        rollouts_text = rollout_table([{j: {"accuracy": large[j]["per_seed"][k], "rollout": ro[j][k]} for j in ro}
                                       for k in range(seeds)])
        rollouts = ro[next(iter(ro))][0]["n"]
    text = (f"# {suite.upper()} benchmark: every method on the synthetic benchmark\n\nCommand: `{data['command']}` "
            f"({took}). Compute: {compute_summary(data['costs'] | (data.get('ablation_costs') or {}))}. "
            "The analysis of these numbers is in NOTES.md beside this file.\n\n"
            f"Accuracy (%) per test split, mean ± std over {seeds} seed(s); "
            f"# tokens = active latents + answer tokens (CoT: generated steps + answer); train steps and minutes: "
            f"each run's optimizer (RL: policy) steps and wall time, mean over seeds.\n\n{table}\n\n"
            "Paired comparisons (same data, same start checkpoint): the accuracy difference in points over every "
            "problem of a split and every seed, its 95% interval from a bootstrap that resamples seeds and problems, "
            "and the two-sided p (docs/metrics.md); then each seed's difference. A difference is shown to hold only "
            f"when its interval excludes 0.\n\n{paired}\n\n"
            + ("RL against its SFT start on the val split (greedy). This is the selection split: each RL run's "
               "`best/` was picked on these problems with the start as its first candidate, so its gain here cannot "
               "be negative; shown for reference, it judges nothing (the verdict columns read \"selection split\")"
               f":\n\n{rl_vs_start_markdown(val)}\n\n" if val else "")
            + (f"The same on {val_large} fresh in-distribution problems (`data/val_large.jsonl` of each seed "
               "folder: drawn like val, in none of the splits, used for no checkpoint selection), where RL is "
               f"judged against its start (one problem = {100 / val_large:.2f} points; the gain's 95% interval from "
               "the paired bootstrap over problems and seeds must lie above 0):\n\n"
               f"{rl_vs_start_markdown(large, digits=2)}\n\n" if large else
               "No held-out problems (`--val-large 0`), so RL is not judged against its start.\n\n")
            + (f"RL's own sampling policy on the same problems: {rollouts} rollouts of each (sampled latents, "
               "sampled stop head, answer temperature 1.0, as in RL's groups), their accuracy, pass@k (at least one "
               f"of {rollouts} right), and the share of problems whose {rollouts} answers are neither all "
               "right nor all wrong (a GRPO group with a signal); mean ± std over seeds:\n\n"
               f"{rollouts_text}\n\n" if rollouts_text else "") +
            "## The claim: ATP-Latent (RL) beats SIM-CoT and Coconut at no more tokens, and RL beats its SFT start\n\n"
            f"{claim_text}\n\n"
            "Plots: `accuracy_vs_tokens.png`, `training_curves.png`, `latents_used.png`.\n")
    warning = _stopped_early(data)
    if warning:
        text += f"\n{warning}\n"
    if data.get("diversity"):
        text += "\n" + diversity_report(data, large, where)
    ablations, ablations_large = data.get("ablations_val"), data.get("ablations_val_large")
    if ablations:
        picked = picked_on_val(ablations)
        text += ("\n## Ablations (val split only, seed 0)\n\nSampled latents: z drawn from the VAE head's "
                 "N(mu, sigma) instead of z = mu, 3 draws. Last column: greedy val accuracy and mean latents per "
                 "number of solution steps. Every run's `best/` was picked on val; the RL rows marked \"best/ picked "
                 "on this split\" had their start as the first candidate there, so they cannot score below it on "
                 "those problems: RL against its start is judged on `val_large` (the next table) only.\n\n"
                 + ablation_table(ablations, picked) + "\n")
    if ablations_large:
        text += (f"\nSeed 0's RL runs on the {val_large} fresh in-distribution problems (`val_large`; every "
                 "RL run's checkpoint was picked on val, none on these), against their start:\n\n"
                 + gain_table(ablations_large) + "\n")
    return text, claim


def diversity_report(data: dict, large: dict | None, where: str) -> str:
    """The many-valid-plans sections of RESULTS.md: the diversity table and the four claims it tests, each judged by
    a paired bootstrap over problems and seeds (docs/metrics.md)."""
    from atp_latent.evaluation.report import (
        beats_at_no_more_tokens,
        coverage_claim,
        diversity_table,
        ood_gap_claim,
        rl_over_start,
    )

    div, per_seed = data["diversity"], data["per_seed"]
    k = next(iter(div.values()))[0]["n_rollouts"]
    a, _ = beats_at_no_more_tokens(per_seed, TEST_SPLITS, LABELS, "atp", ("coconut", "simcot"))
    b, _ = coverage_claim(div, LABELS, "atp", ("cot", "simcot"))
    c = [rl_over_start(large, _label(j), j, "atp", where)[0] for j in ("atp_rl", "atp_rl_coherence")
         if large and j in large]
    d, _ = ood_gap_claim(per_seed, LABELS, "atp", tuple(j for j in ("cot", "coconut", "simcot")
                                                         if all(j in r for r in per_seed)))
    return (f"## Reasoning-path diversity on `test`\n\n{k} rollouts of every test problem per method and seed, under "
            "RL's rollout policy for every method (latents sampled from the VAE head where there is one, the stop "
            "head sampled, answer tokens at temperature 1.0: CoT varies in the steps it writes, Coconut and SIM-CoT "
            "only in their answers, since their latents are deterministic). A plan is CoT's written steps or the step "
            "decoder's reading of the latent groups (n/a: no readable plan); it is valid when it is one of the "
            "problem's valid step orders. Definitions: docs/metrics.md. Mean ± std over seeds; plot "
            f"`diversity.png`.\n\n{diversity_table(div, LABELS)}\n\n"
            "## The premise's claims in this regime\n\n(a) ATP SFT beats Coconut and SIM-CoT on accuracy at no more "
            "tokens:\n" + "\n".join(a) + "\n\n(b) ATP's sampled plans are more diverse than CoT's and SIM-CoT's at "
            "equal validity:\n" + "\n".join(b) + "\n\n(c) RL, and RL with the coherence reward alone, improve on "
            "their SFT start on problems no run selected on:\n" + ("\n".join(c) or "- not judged (no held-out "
            "problems)") + "\n\n(d) ATP's OOD gap (test minus the three OOD splits) is smaller than the others':\n"
            + ("\n".join(d) or "- not judged (no per-problem outcomes)") + "\n")


def write_report(out: Path | str) -> Path:
    """Re-write a bench's RESULTS.md from its results.json, without the runs (`python -m
    atp_latent.suite OUT`): nothing is trained or evaluated again. The claim's facts in results.json are decided
    again by today's rules; every measured number is kept."""
    out = Path(out)
    data = json.loads((out / "results.json").read_text())
    before = json.dumps(data, indent=2)
    # older files: label which RL-vs-start summary is of the split best/ was picked on
    for key, split, held_out in (("rl_vs_start_val", "val", False), ("rl_vs_start_val_large", "val_large", True)):
        if data.get(key):
            data[key] = {"split": split, "held_out": held_out} | data[key]
    text, data["claim"] = bench_report(data, "RESULTS.md re-written from results.json by `python -m "
                                             f"atp_latent.suite {out}`: no run trained or evaluated again")
    if json.dumps(data, indent=2) != before:
        (out / "results.json").write_text(json.dumps(data, indent=2))
    (out / "RESULTS.md").write_text(text)
    return out / "RESULTS.md"


if __name__ == "__main__":
    print(f"wrote {write_report(sys.argv[1])}")
