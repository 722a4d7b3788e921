"""Is method A better than method B? A paired, hierarchical bootstrap over seeds and problems.

Input: for each method, per-problem outcomes (1 right, 0 wrong; any real score works) for every seed, over the
same problems in the same order: a dict seed -> list of outcomes (the two dicts with the same seeds), or a 2-D
array of shape (seeds, problems). Seed s of A is paired with seed s of B, and problem i with problem i.

Convention:

- The statistic is the mean difference A - B over all seeds and problems, as a fraction (accuracy 0.62 vs 0.55
  gives +0.07; multiply by 100 for accuracy points).
- One bootstrap replicate draws S seeds with replacement, then P problems with replacement (the same problem
  draw for every seed of the replicate, since seeds share the problems), and takes the mean of A - B over the
  drawn seed x problem grid. This keeps both sources of variation: which seeds were run and which problems
  were asked.
- The interval is the percentile interval of the replicates: the (1 - confidence) / 2 and (1 + confidence) / 2
  quantiles (95% by default).
- The two-sided p-value is p = 2 * min(share of replicates <= 0, share of replicates >= 0), clipped to 1. It is
  the percentile interval's counterpart: p < 0.05 about when the 95% interval excludes 0. Replicates equal to 0
  count on both sides, so a tie is never evidence.
- The draws come from numpy's default generator with a fixed seed (`rng_seed`, default 0): the same inputs give
  the same interval and p-value. The default 10,000 replicates put the p-value's Monte-Carlo standard error near
  0.003 at p = 0.05.
- Drawing both seeds and problems counts both sources of noise; when outcomes vary independently across seeds
  on each problem this overstates the noise, so the test errs on the conservative side.

`verdict(result)` says "holds" only when the interval lies strictly on the claimed side of 0 (above it for
"A > B"), else "does not hold". docs/metrics.md states the same convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Outcomes = Mapping[object, Sequence[float]] | Sequence[Sequence[float]] | np.ndarray
Claim = Literal["A > B", "A < B"]

DEFAULT_REPLICATES = 10_000
_CHUNK_CELLS = 4_000_000  # replicates are drawn in chunks so memory stays near chunk x problems floats


@dataclass(frozen=True)
class PairedBootstrapResult:
    """A - B as a fraction, its percentile interval, the two-sided bootstrap p-value, and what it was drawn from."""

    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float
    n_seeds: int
    n_problems: int
    n_replicates: int
    rng_seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def outcome_matrices(outcomes_a: Outcomes, outcomes_b: Outcomes) -> tuple[np.ndarray, np.ndarray]:
    """The two methods' outcomes as float arrays of shape (seeds, problems), seed rows paired; ValueError (one
    line) when they cannot be paired. A 1-D sequence is one seed."""
    if isinstance(outcomes_a, Mapping) != isinstance(outcomes_b, Mapping):
        raise ValueError("outcomes_a and outcomes_b must both be dicts seed -> outcomes, or both arrays")
    if isinstance(outcomes_a, Mapping):
        if set(outcomes_a) != set(outcomes_b):
            raise ValueError(f"A and B have different seeds: {sorted(map(str, outcomes_a))} vs "
                             f"{sorted(map(str, outcomes_b))}")
        seeds = list(outcomes_a)
        a = _matrix([outcomes_a[s] for s in seeds], "A")
        b = _matrix([outcomes_b[s] for s in seeds], "B")
    else:
        a, b = _matrix(outcomes_a, "A"), _matrix(outcomes_b, "B")
    if a.shape != b.shape:
        raise ValueError(f"A and B must have the same (seeds, problems) shape, got {a.shape} and {b.shape}")
    return a, b


def _matrix(rows: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    """One method's outcomes as a float (seeds, problems) array; a 1-D sequence is one seed."""
    try:
        m = np.asarray(rows, dtype=float)
    except (TypeError, ValueError):  # ragged rows, or something that is not a number
        raise ValueError(f"{name} is not a (seeds, problems) table of numbers: every seed needs one outcome per "
                         "problem") from None
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"{name} needs a (seeds, problems) array with at least one of each, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} has outcomes that are not finite numbers")
    return m


def _check_settings(n_replicates: int, confidence: float) -> None:
    if n_replicates < 1:
        raise ValueError(f"n_replicates must be at least 1, got {n_replicates}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """The percentile interval of the replicates and the two-sided p = 2 min(share <= 0, share >= 0), at most 1."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high), min(1.0, 2 * min(float(np.mean(replicates <= 0)), float(np.mean(replicates >= 0))))


def paired_bootstrap(
    outcomes_a: Outcomes,
    outcomes_b: Outcomes,
    *,
    n_replicates: int | None = None,
    confidence: float = 0.95,
    rng_seed: int = 0,
) -> PairedBootstrapResult:
    """Mean difference A - B (fraction), its percentile interval and two-sided p-value from a hierarchical
    bootstrap: seeds with replacement, then problems with replacement, shared by every seed (module docstring).
    n_replicates: DEFAULT_REPLICATES when not given."""
    n_replicates = DEFAULT_REPLICATES if n_replicates is None else n_replicates
    _check_settings(n_replicates, confidence)
    a, b = outcome_matrices(outcomes_a, outcomes_b)
    diff = a - b
    n_seeds, n_problems = diff.shape
    rng = np.random.default_rng(rng_seed)
    replicates = np.empty(n_replicates)
    chunk = max(1, _CHUNK_CELLS // n_problems)
    for start in range(0, n_replicates, chunk):
        r = min(chunk, n_replicates - start)
        # How often each seed and each problem is drawn: sum over drawn (seed, problem) cells of diff is
        # seed_counts @ diff @ problem_counts, without building the grid of drawn indices.
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=r)
        problem_counts = rng.multinomial(n_problems, np.full(n_problems, 1 / n_problems), size=r)
        totals = ((seed_counts @ diff) * problem_counts).sum(axis=1)
        replicates[start:start + r] = totals / (n_seeds * n_problems)
    low, high, p = _interval(replicates, confidence)
    return PairedBootstrapResult(
        mean_difference=float(diff.mean()), ci_low=float(low), ci_high=float(high), p_value=float(p),
        confidence=confidence, n_seeds=n_seeds, n_problems=n_problems, n_replicates=n_replicates,
        rng_seed=rng_seed,
    )


def verdict(result: PairedBootstrapResult, claim: Claim = "A > B") -> str:
    """"holds" when the whole interval is on the claimed side of 0 (strictly: an end at 0 does not hold), else
    "does not hold"."""
    if claim == "A > B":
        holds = result.ci_low > 0
    elif claim == "A < B":
        holds = result.ci_high < 0
    else:
        raise ValueError(f'claim must be "A > B" or "A < B", got {claim!r}')
    return "holds" if holds else "does not hold"


def paired_gap_bootstrap(
    a_in: Outcomes,
    b_in: Outcomes,
    a_out: Outcomes,
    b_out: Outcomes,
    *,
    n_replicates: int | None = None,
    confidence: float = 0.95,
    rng_seed: int = 0,
) -> PairedBootstrapResult:
    """Difference of two gaps: (A - B) on one problem set minus (A - B) on another, e.g. how much smaller A's drop
    from in-distribution to out-of-distribution problems is than B's: (A_in - A_out) - (B_in - B_out). A replicate
    draws the seeds once (shared by both sets) and each set's problems on their own; interval and p as
    paired_bootstrap. The result's n_problems is the two sets' problems together."""
    n_replicates = DEFAULT_REPLICATES if n_replicates is None else n_replicates
    _check_settings(n_replicates, confidence)
    d_in = np.subtract(*outcome_matrices(a_in, b_in))
    d_out = np.subtract(*outcome_matrices(a_out, b_out))
    if d_in.shape[0] != d_out.shape[0]:
        raise ValueError(f"the two problem sets have different seeds: {d_in.shape[0]} and {d_out.shape[0]}")
    n_seeds = d_in.shape[0]
    rng = np.random.default_rng(rng_seed)
    replicates = np.empty(n_replicates)
    chunk = max(1, _CHUNK_CELLS // max(d_in.shape[1], d_out.shape[1]))
    for start in range(0, n_replicates, chunk):
        r = min(chunk, n_replicates - start)
        seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=r)
        means = []
        for d in (d_in, d_out):
            problems = rng.multinomial(d.shape[1], np.full(d.shape[1], 1 / d.shape[1]), size=r)
            means.append(((seeds @ d) * problems).sum(axis=1) / (n_seeds * d.shape[1]))
        replicates[start:start + r] = means[0] - means[1]
    low, high, p = _interval(replicates, confidence)
    return PairedBootstrapResult(
        mean_difference=float(d_in.mean() - d_out.mean()), ci_low=float(low), ci_high=float(high),
        p_value=float(p), confidence=confidence, n_seeds=n_seeds, n_problems=d_in.shape[1] + d_out.shape[1],
        n_replicates=n_replicates, rng_seed=rng_seed,
    )
