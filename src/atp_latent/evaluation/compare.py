"""Is run A better than run B on the same problems? `atp-latent compare` over eval's prediction files.

    A: seed-0.predictions.jsonl  seed-1.predictions.jsonl  ...      (atp-latent eval --predictions, one per seed)
    B: seed-0.predictions.jsonl  seed-1.predictions.jsonl  ...
           |  the i-th file of A is paired with the i-th of B; problems are paired by (data, id)
           v
    per file and problem: the share of its samples answered right (1 or 0 with one sample)
           v
    stats.paired_bootstrap over seeds x problems -> A - B, 95% interval, p, "holds" / "does not hold"

compare_bench does the same for two jobs of a bench folder (`atp-latent bench`'s results.json), from the
per-problem outcomes the bench stores for every seed and test split: seeds are those both jobs ran, and the splits
are compared one by one and pooled ("all splits").

Each data set in the files (`data` field) is compared on its own, and, with by_steps, again for each number of
solution steps (`steps` field; problems without one are left out of that breakdown). Every file must hold the same
problems of the same data sets: a comparison over different problems is not paired, so it is refused, naming the
file and the first problem that differs. The convention (interval, p-value, verdict) is stats.py's and
docs/metrics.md's, the one the bench's claims use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atp_latent.data.records import DataError
from atp_latent.evaluation.report import outcomes, with_jobs
from atp_latent.evaluation.stats import Claim, paired_bootstrap, verdict


@dataclass
class Predictions:
    """One prediction file: for each data set, each problem's samples (right or not) and its step count."""

    path: str
    samples: dict[str, dict[str, list[bool]]] = field(default_factory=dict)  # data -> id -> right, sample by sample
    steps: dict[str, dict[str, int | None]] = field(default_factory=dict)  # data -> id -> solution steps

    def outcomes(self, data: str, ids: Sequence[str]) -> list[float]:
        """The share of each problem's samples answered right, problems in the order of ids."""
        return [float(np.mean(self.samples[data][i])) for i in ids]


def read_predictions(path: str | Path) -> Predictions:
    """A `.predictions.jsonl` file of `atp-latent eval --predictions`; DataError (file, line, field) on a bad line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(path, None, "file", f"cannot read it ({e.strerror or e})") from None
    preds = Predictions(str(path))
    seen: set[tuple[str, str, int]] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, n, "line", f"not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(path, n, "line", "not a JSON object")
        for key, kind in (("data", str), ("id", str), ("correct", bool)):
            if key not in row:
                raise DataError(path, n, key, "missing (is this a file of `atp-latent eval --predictions`?)")
            if not isinstance(row[key], kind):
                raise DataError(path, n, key, f"expected {'true or false' if kind is bool else 'a string'}, got "
                                f"{row[key]!r}")
        sample, steps = row.get("sample", 0), row.get("steps")
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
            raise DataError(path, n, "sample", f"expected an integer >= 0, got {sample!r}")
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
            raise DataError(path, n, "steps", f"expected an integer >= 0 or null, got {steps!r}")
        data, pid = row["data"], row["id"]
        if (data, pid, sample) in seen:
            raise DataError(path, n, "id", f"problem {pid!r} of {data!r} appears twice in sample {sample}")
        seen.add((data, pid, sample))
        preds.samples.setdefault(data, {}).setdefault(pid, []).append(row["correct"])
        if preds.steps.setdefault(data, {}).setdefault(pid, steps) != steps:
            raise DataError(path, n, "steps", f"problem {pid!r} has {steps} steps here and "
                            f"{preds.steps[data][pid]} in an earlier sample")
    if not preds.samples:
        raise DataError(path, None, "file", "holds no predictions")
    return preds


def _check_same_problems(first: Predictions, other: Predictions) -> None:
    """Refuse a file whose data sets or problems differ from the first file's: the comparison would not be paired."""
    for data in first.samples:
        if data not in other.samples:
            raise DataError(other.path, None, "data", f"has no problems of {data!r}, which {first.path} has")
    for data in other.samples:
        if data not in first.samples:
            raise DataError(other.path, None, "data", f"has problems of {data!r}, which {first.path} has not")
    for data in first.samples:
        a, b = first.samples[data], other.samples[data]
        if set(a) != set(b):
            lacks, has, pid = (other, first, min(set(a) - set(b))) if set(a) - set(b) else \
                (first, other, min(set(b) - set(a)))
            raise DataError(lacks.path, None, "id", f"has no problem {pid!r} of {data!r}, which {has.path} has; "
                            "compare predictions on the same problems")
        for pid, steps in first.steps[data].items():
            if other.steps[data][pid] != steps:
                raise DataError(other.path, None, "steps", f"problem {pid!r} of {data!r} has "
                                f"{other.steps[data][pid]} steps here and {steps} in {first.path}")


def _judge(a: list[list[float]], b: list[list[float]], claim: Claim, **bootstrap) -> dict:
    result = paired_bootstrap(a, b, **bootstrap)
    return {"problems": result.n_problems, "seeds": result.n_seeds,
            "accuracy_a": float(np.mean(a)), "accuracy_b": float(np.mean(b)),
            "difference": result.mean_difference, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "p_value": result.p_value, "verdict": verdict(result, claim)}


def _judge_by_steps(a: list[list[float]], b: list[list[float]], steps: Sequence[int | None] | None, claim: Claim,
                    **bootstrap) -> dict:
    """_judge over every problem (column), and, given each problem's step count (None: not labelled), again for
    each step count under `by_steps`."""
    res = _judge(a, b, claim, **bootstrap)
    if steps:
        res["by_steps"] = {str(k): _judge([[row[i] for i, n in enumerate(steps) if n == k] for row in a],
                                          [[row[i] for i, n in enumerate(steps) if n == k] for row in b],
                                          claim, **bootstrap)
                           for k in sorted({n for n in steps if n is not None})}
    return res


def compare_predictions(a_paths: Sequence[str | Path], b_paths: Sequence[str | Path], *, claim: Claim = "A > B",
                        by_steps: bool = False, n_replicates: int | None = None, confidence: float = 0.95,
                        rng_seed: int = 0) -> dict:
    """A's prediction files against B's, the i-th of each paired (one seed each). For each data set: both
    accuracies, A - B as a fraction, its interval and p-value, and the claim's verdict; with by_steps, the same for
    each number of solution steps under `by_steps`. ValueError when the two sides have different numbers of files;
    DataError when a file is bad or holds other problems than the first."""
    if len(a_paths) != len(b_paths) or not a_paths:
        raise ValueError(f"compare pairs the i-th file of A with the i-th of B (one seed each): give both sides the "
                         f"same number of files, at least one; got {len(a_paths)} and {len(b_paths)}")
    a_files, b_files = [read_predictions(p) for p in a_paths], [read_predictions(p) for p in b_paths]
    first = a_files[0]
    for other in a_files[1:] + b_files:
        _check_same_problems(first, other)
    bootstrap = dict(n_replicates=n_replicates, confidence=confidence, rng_seed=rng_seed)
    out: dict = {"claim": claim, "confidence": confidence, "a": [p.path for p in a_files],
                 "b": [p.path for p in b_files], "data": {}}
    for data in first.samples:
        ids = sorted(first.samples[data])
        out["data"][data] = _judge_by_steps([f.outcomes(data, ids) for f in a_files],
                                            [f.outcomes(data, ids) for f in b_files],
                                            [first.steps[data][i] for i in ids] if by_steps else None,
                                            claim, **bootstrap)
    return out


def comparison_lines(result: dict, name_a: str = "A", name_b: str = "B") -> list[str]:
    """The comparison as text: one line per data set, one indented line per step count."""
    claim = f"{name_a} {'better' if result['claim'] == 'A > B' else 'worse'} than {name_b}"

    def line(r: dict) -> str:
        seeds = f"{r['seeds']} seed{'s' if r['seeds'] > 1 else ''}"
        return (f"{name_a} {100 * r['accuracy_a']:.1f}% vs {name_b} {100 * r['accuracy_b']:.1f}% ({seeds} x "
                f"{r['problems']} problems): {name_a} - {name_b} {100 * r['difference']:+.1f} points "
                f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}], p = {r['p_value']:.2g}; {claim}: "
                f"{r['verdict']}")

    lines = []
    for data, r in result["data"].items():
        lines.append(f"{data}: {line(r)}")
        for k, rk in r.get("by_steps", {}).items():
            lines.append(f"  {k} steps: {line(rk)}")
    return lines


ALL_SPLITS = "all splits"
HELD_OUT = "val_large"  # the bench's held-out problems, on which RL is judged against its start


def compare_bench(folder: str | Path, job_a: str, job_b: str, *, splits: Sequence[str] | None = None,
                  claim: Claim = "A > B", by_steps: bool = False, n_replicates: int | None = None,
                  confidence: float = 0.95, rng_seed: int = 0) -> dict:
    """Two jobs of a bench folder on its test splits, from results.json's per-seed outcomes: the seeds both jobs
    ran are paired, each split is compared on its own and all of them pooled (ALL_SPLITS: each seed's outcomes over
    the splits one after another). by_steps uses the step counts the bench stored (`steps_per_problem`). The split
    HELD_OUT (asked for by name) compares RL and its start on the held-out problems, as the bench judges them.
    ValueError (one line) for a folder without results.json, or a job or split it does not have."""
    path = Path(folder) / "results.json"
    try:
        res = json.loads(path.read_text())
    except OSError:
        raise DataError(path, None, "file", "cannot read it: is this a bench folder (atp-latent bench --out)?") from None
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, "file", f"not JSON ({e.msg})") from None
    per_seed = res.get("per_seed") or []
    ran = {job for seed in per_seed for job in seed}
    for job in (job_a, job_b):
        if job not in ran:
            raise ValueError(f"{path} has no job {job!r}; its jobs: {', '.join(sorted(ran))}")
    seeds = with_jobs(per_seed, job_a, job_b)
    if not seeds:
        raise ValueError(f"{path}: {job_a!r} and {job_b!r} share no seed")
    bench_splits = list(res.get("splits") or seeds[0][job_a])
    # RL and its SFT start on the held-out problems (val_large), stored per seed for those jobs only
    held = res.get("rl_vs_start_val_large") or {}
    held_jobs = [job for job, v in held.items() if isinstance(v, dict) and "correct" in v]
    known = bench_splits + ([HELD_OUT] if held_jobs else [])
    splits = list(splits or bench_splits)
    for split in splits:
        if split not in known:
            raise ValueError(f"{path} has no split {split!r}; its splits: {', '.join(known)}")
        if split == HELD_OUT and not {job_a, job_b} <= set(held_jobs):
            raise ValueError(f"{path} has {HELD_OUT} outcomes for {', '.join(held_jobs)} only (RL and its start)")

    def rows(job: str, splits: list[str]) -> list[list[int]]:
        """One row of outcomes per paired seed, over `splits` one after another."""
        if splits == [HELD_OUT]:
            return [[int(c) for c in bits] for bits in held[job]["correct"]]
        got = outcomes(seeds, job, splits)
        if got is None:
            raise ValueError(f"{path} has no per-problem outcomes of {job!r} on {', '.join(splits)}")
        return got

    bootstrap = dict(n_replicates=n_replicates, confidence=confidence, rng_seed=rng_seed)
    out: dict = {"claim": claim, "confidence": confidence, "bench": str(folder), "a": job_a, "b": job_b,
                 "seeds": [per_seed.index(seed) for seed in seeds], "data": {}}
    steps_of = res.get("steps_per_problem") or {}
    for split in splits:
        a, b = rows(job_a, [split]), rows(job_b, [split])
        steps = steps_of.get(split) if by_steps else None
        if steps and len(steps) != len(a[0]):
            raise DataError(path, None, "steps_per_problem", f"{split!r} has {len(steps)} step counts for "
                            f"{len(a[0])} problems")
        out["data"][split] = _judge_by_steps(a, b, steps, claim, **bootstrap)
    pooled = [split for split in splits if split != HELD_OUT]  # the test splits; val_large is judged on its own
    if len(pooled) > 1:
        out["data"][ALL_SPLITS] = _judge(rows(job_a, pooled), rows(job_b, pooled), claim, **bootstrap)
    return out
