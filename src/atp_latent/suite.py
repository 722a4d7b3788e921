"""Train and compare several methods the same way: the quickstart and `atp-latent bench`.

The jobs and suites are in jobs.py, the training schedule in scheduler.py, RESULTS.md in bench_results.py. Here: the
data every job of a seed folder shares, the evaluations (every model on every synthetic test split with the same
harness; RL against its SFT start on held-out problems (val_large) only, since RL's best/ is picked on val; the
plans' diversity), and the two commands that run it all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from atp_latent.bench_results import bench_report, rl_vs_start_table, stopped_early
from atp_latent.data.synthetic import CONFIG_NAME, REGIMES, SynthConfig, write_benchmark
from atp_latent.jobs import (
    DEFAULT_CLAIM_SEEDS,
    DEFAULT_DIVERSITY,
    DEFAULT_ROLLOUTS,
    DEFAULT_VAL_LARGE,
    LABELS,
    NEW_STYLE_JOBS,
    RL_FROM_ATP,
    STARTS,
    SUITES,
    TEST_SPLITS,
    Suite,
    _label,
    regime_sets,
    regime_suite,
    seed_jobs,
    subset,
)
from atp_latent.scheduler import finished, train_jobs


def _run_fingerprint(run: Path) -> str:
    """What identifies a finished run's training: its final/reasoner.json and metrics log (a retrained run writes
    new ones). Content, not modification times, so a run folder copied or checked out elsewhere keeps its caches."""
    digest = hashlib.sha256()
    for name in ("final/reasoner.json", "metrics.jsonl"):
        path = run / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def _cached(run: Path, name: str, compute, *args, valid=None):
    """An evaluation of a finished run, kept beside it (run/name, with the run's fingerprint) and reused while the
    run is the one it was computed on and `valid` accepts it (so a figure added later, or a redrawn split, is
    computed once): evaluation is deterministic, so re-running a bench only evaluates the runs that changed."""
    path, fingerprint = run / name, _run_fingerprint(run)
    if path.is_file() and (run / "final" / "reasoner.json").is_file():
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("run") == fingerprint and "value" in cached \
                and (valid is None or valid(cached["value"])):
            return cached["value"]
    value = compute(*args)
    path.write_text(json.dumps({"run": fingerprint, "value": value}))
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


def folder_config(out: Path) -> SynthConfig:
    """The settings a seed folder's data was drawn with (data/synth_config.json; the default regime's when a folder
    predates that file), so problems drawn later for it (val_large, fresh) come from the same regime."""
    path = out / "data" / CONFIG_NAME
    return SynthConfig(**json.loads(path.read_text())) if path.is_file() else SynthConfig()


def _draw_in_distribution(out: Path, seed: int, n: int, avoid: tuple[str, ...] = ()) -> list:
    """`n` in-distribution problems drawn like val (the folder's regime) with data seed `seed`, kept only when their text is in none of the
    seed folder's splits nor in the files `avoid` (paths under its data/)."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.synthetic import SPLITS, generate_benchmark

    data = out / "data"
    files = [data / f"{split}.jsonl" for split in SPLITS] + [data / a for a in avoid if (data / a).is_file()]
    taken = {r.question for f in files for r in load_records(f)}
    drawn = generate_benchmark(dataclasses.replace(folder_config(out), seed=seed, n_train=10, n_val=n + n // 10 + 10,
                                                   n_test=10, n_ood=10))["val"]
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
    notes = "\n".join(n for n in (kept_start_note(out / "runs", suite.jobs),
                                   stopped_early_note({_label(j): out / "runs" / j for j in suite.jobs})) if n)
    (out / "RESULTS.md").write_text(
        f"# Quickstart results (seed {args.seed})\n\nAccuracy (%) on each synthetic test split; # tokens = active "
        f"latents + answer tokens (CoT: generated steps + answer).\n\n{table}\n\nTotal time: {minutes:.1f} min.\n"
        + (f"\n{notes}\n" if notes else ""))
    print("\n" + table + "\n" + (f"\n{notes}\n" if notes else ""))
    print(f"run directories: {out / 'runs'}  table: {out / 'RESULTS.md'}  ({minutes:.1f} min)")
    return 0


def accuracy_by_steps(problems, rows: list[dict]) -> dict[str, dict]:
    """Greedy accuracy and mean latents per number of solution steps ({"2": {"n", "accuracy", "latents"}, ...}):
    where an ablation loses, e.g. a fixed number of latents costs only the problems that need them all."""
    from atp_latent.evaluation.evaluate import accuracy_by_steps as by_steps  # eval's, under the cache's keys

    rows = [r | {"steps": len(p.steps)} for p, r in zip(problems, rows, strict=True)]
    return {k: {"n": g["problems"], "accuracy": g["accuracy"], "latents": g["mean_latents"]}
            for k, g in by_steps([rows]).items()}


def steps_per_problem(seed_dir: Path) -> dict[str, list[int]]:
    """Each `test` problem's number of solution steps, in file order (every seed folder holds the same problems),
    for the report's accuracy by step count (bench_results.steps_table); {} (no table) for a folder without its
    test split, as in tests that stub the evaluations."""
    from atp_latent.data.formats import load_records

    path = seed_dir / "data" / "test.jsonl"
    return {"test": [len(p.steps) for p in load_records(path)]} if path.is_file() else {}


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
        if (step := best_step(out / "runs" / job)) is not None:  # kept, so the report needs no trainer state
            row["best_step"] = step
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


def kept_start_note(runs: Path, jobs) -> str:
    """One line naming the RL runs (among `jobs`, in `runs`) whose best/ is their SFT start, or '': RL never beat
    the start on val, so the evaluated model is the start and its row repeats the start's."""
    kept = [j for j in jobs if STARTS.get(j) in jobs and best_step(runs / j) == 0]
    if not kept:
        return ""
    return ("Note: " + "; ".join(f"{_label(j)} never beat its start on val, so its `best/` (the model evaluated) is "
                                 f"{_label(STARTS[j])} itself and its row repeats that one" for j in kept)
            + f" (its training curve: {runs / kept[0] / 'metrics.jsonl'}).")


def best_step(run: Path) -> int | None:
    """The optimizer (RL: policy) step at which the run's best/ was saved, from its trainer state; None when it
    has none. An RL run's 0 means it never beat its start on val, so its best/ is the start itself."""
    import torch

    path = run / "best" / "trainer_state.pt"
    if not path.is_file():
        return None
    # mmap: the step only, without reading the optimizer state a large model's checkpoint carries
    progress = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("progress") or {}
    return int(progress["step"]) if "step" in progress else None


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
    regime = getattr(args, "regime", "default")
    suite, out = regime_suite(SUITES[args.suite], regime), Path(args.out)
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
    default_claim_seeds = max(args.seeds, DEFAULT_CLAIM_SEEDS.get(regime, 0)) if suite.claims else args.seeds
    if getattr(args, "claim_seeds", None) is None:
        args.claim_seeds = default_claim_seeds
    n_dirs = max(args.claim_seeds, args.seeds) if suite.claims else args.seeds
    seed_dirs = [out / f"seed-{seed}" for seed in range(n_dirs)]
    jobs_of = [seed_jobs(suite, seed, args.seeds) for seed in range(n_dirs)]  # claim rows only beyond --seeds
    ablation_jobs = list(suite.ablations) if args.ablations else []
    tasks = [(d, j, seed) for seed, d in enumerate(seed_dirs) for j in jobs_of[seed]]
    tasks += [(seed_dirs[0], j, 0) for j in ablation_jobs]
    partial = False  # a --no-train report while some runs have not finished: it says so and names --no-train
    if getattr(args, "no_train", False):  # report what has finished: the runs a bench still training has completed
        done = {(d, j) for d, j, _ in tasks if finished(d, j)}
        partial = len(done) < len(tasks)  # all finished: the same report as the command's own
        jobs_of = [[j for j in js if (d, j) in done] for d, js in zip(seed_dirs, jobs_of)]
        ablation_jobs = [j for j in ablation_jobs if (seed_dirs[0], j) in done]
        n_dirs = next((k for k in range(n_dirs, 0, -1) if jobs_of[k - 1]), 0)
        if not n_dirs:
            raise ValueError(f"--no-train: no run in {out} has finished yet")
        seed_dirs, jobs_of = seed_dirs[:n_dirs], jobs_of[:n_dirs]
        print(f"reporting the {len(done)} of {len(tasks)} runs that have finished; training nothing", flush=True)
        trained = 0
    else:
        for d in seed_dirs:
            write_data(d, args.data_seed, regime)
            if any(j in NEW_STYLE_JOBS for j in suite.jobs):
                write_new_style(d, args.data_seed)
            if args.val_large and "atp_rl" in suite.jobs:
                write_val_large(d, args.data_seed, args.val_large)
        if args.ablations and "atp_rl_fresh" in suite.ablations:
            write_fresh(seed_dirs[0], args.data_seed)  # after val_large, which it avoids
        print(f"training {len(tasks)} jobs, {args.slots} at a time (logs in {out}/seed-*/logs)", flush=True)
        trained = train_jobs(suite, tasks, args.scale, args.overrides, slots=args.slots,
                             job_sets=regime_sets(suite, regime, suite.jobs + ablation_jobs))
    per_seed, latents = [], {j: [] for j in suite.jobs}
    for seed, d in enumerate(seed_dirs):
        print(f"evaluating seed {seed} on every synthetic test split", flush=True)
        results, lat = evaluate_seed(jobs_of[seed], d, seed)
        per_seed.append(results)
        for j in jobs_of[seed]:
            latents[j] += lat[j]
    print("evaluating the RL runs and their SFT start on the val split (where RL's best/ was picked)", flush=True)
    start_and_rl = [j for j in ("atp", *RL_FROM_ATP) if any(j in js for js in jobs_of)]

    # RL and its start are compared on the seeds that ran them all
    rl_dirs = [d for d, js in zip(seed_dirs, jobs_of) if set(start_and_rl) <= set(js)]
    val_rows = [evaluate_val(start_and_rl, d) for d in rl_dirs] if len(start_and_rl) > 1 else []
    rl_summary = rl_vs_start_table(val_rows, split="val", held_out=False)[1] if val_rows else None
    large_summary = rollouts_summary = None
    if args.val_large and "atp_rl" in start_and_rl and rl_dirs:
        print(f"evaluating the same on {args.val_large} held-out in-distribution problems (val_large)", flush=True)
        large_rows = [evaluate_val(start_and_rl, d, samples=0, split="val_large", rollouts=args.rollouts)
                      for d in rl_dirs]
        large_summary = rl_vs_start_table(large_rows, digits=2, split="val_large", held_out=True)[1]
        rollouts_summary = {j: [r[j]["rollout"] for r in large_rows] for j in start_and_rl
                            if all("rollout" in r.get(j, {}) for r in large_rows)} or None
    diversity = None
    if getattr(args, "diversity", None) is None:
        args.diversity = DEFAULT_DIVERSITY.get(regime, 0)
    if args.diversity:
        print(f"sampling {args.diversity} rollouts of every test problem for the plans' diversity", flush=True)
        per = [evaluate_diversity(jobs_of[seed], d, samples=args.diversity) for seed, d in enumerate(seed_dirs)]
        diversity = {j: [p[j] | {"seed": seed} for seed, p in enumerate(per) if j in p] for j in suite.jobs}
        diversity = {j: v for j, v in diversity.items() if v}
    ablations = ablations_large = None
    if args.ablations:
        print("evaluating seed 0 and the ablations on the val split", flush=True)
        ablations = evaluate_val(jobs_of[0] + ablation_jobs, seed_dirs[0])
        rl_jobs = [j for j in jobs_of[0] + ablation_jobs if STARTS.get(j) == "atp" and j not in NEW_STYLE_JOBS]
        if args.val_large and rl_jobs:
            print("evaluating seed 0's RL runs on val_large", flush=True)
            ablations_large = evaluate_val(["atp"] + rl_jobs, seed_dirs[0], samples=0, split="val_large") \
                if "atp" in jobs_of[0] else None
    agg = aggregate(per_seed)
    costs = {j: [run_cost(d / "runs" / j) for seed, d in enumerate(seed_dirs) if j in jobs_of[seed]]
             for j in suite.jobs}
    ablation_costs = {j: run_cost(seed_dirs[0] / "runs" / j) for j in ablation_jobs}
    plot_accuracy_vs_tokens(agg, per_seed, TEST_SPLITS, LABELS, out / "accuracy_vs_tokens.png")
    curves = {j: [d / "runs" / j for seed, d in enumerate(seed_dirs) if j in jobs_of[seed]] for j in suite.jobs}
    curves.update({j: [seed_dirs[0] / "runs" / j] for j in ablation_jobs})
    plot_training_curves({j: v for j, v in curves.items() if v}, LABELS, out / "training_curves.png")
    plot_latents({j: v for j, v in latents.items() if v}, LABELS, out / "latents_used.png")
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
                       + (["--claim-seeds", str(args.claim_seeds)] if args.claim_seeds != default_claim_seeds else [])
                       + (["--diversity", str(args.diversity)]
                          if args.diversity != DEFAULT_DIVERSITY.get(regime, 0) else []) + ["--out", str(out)]
                       + (["--no-train"] if partial else []))
    data = {"command": command, "suite": args.suite, "regime": regime, "seeds": min(args.seeds, len(per_seed)),
            "claim_seeds": n_dirs, "claim_jobs": list(suite.claims), "val_large": args.val_large,
            "rollouts": args.rollouts, "splits": TEST_SPLITS, "mean": agg, "per_seed": per_seed, "costs": costs,
            "ablation_costs": ablation_costs, "rl_vs_start_val": rl_summary, "rl_vs_start_val_large": large_summary,
            "claim": None, "rollouts_val_large": rollouts_summary, "diversity": diversity, "ablations_val": ablations,
            "ablations_val_large": ablations_large, "steps_per_problem": steps_per_problem(seed_dirs[0])}
    minutes = (time.time() - t0) / 60
    took = f"{minutes:.0f} min on this machine"
    if partial:
        took += (f"; **a partial report**: the {len(done)} runs finished so far of the {len(tasks)} that "
                 "the command without --no-train trains, the others left out of every table")
    if trained < len(tasks) and not partial:
        took += (f" for this invocation, which trained {trained} of the {len(tasks)} runs and reused the others, "
                 "finished by an earlier invocation of the same command")
    text, data["claim"] = bench_report(data, took)
    (out / "results.json").write_text(json.dumps(data, indent=2))
    warning = stopped_early(data)
    if warning:
        print(warning, flush=True)
    (out / "RESULTS.md").write_text(text)
    print("\n" + results_table(agg, per_seed, TEST_SPLITS, LABELS, costs) + f"\n\nwrote {out / 'RESULTS.md'} "
          f"({minutes:.0f} min)")
    return 0
