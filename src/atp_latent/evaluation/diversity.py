"""Reasoning-path diversity: how many of a problem's valid step orders a method's sampled plans use.

A problem with independent steps can be solved in several orders (`data.synthetic.valid_orders` lists them:
the set V). Sampling K rollouts of a method on that problem gives K (plan, correct) pairs, where the plan is
the sequence of steps the method's latents decode to (or None for a method with no readable plan). The metrics
here ask whether those plans are valid orders, how many different valid orders lead to right answers, how evenly
the right answers spread over them, and how far apart the valid plans are; plus pass@k, and a strict pass@k
that only counts a rollout whose plan is also valid.

Everything works on plain data (lists of step strings and booleans). Steps are compared after normalisation:
the surrounding `<<`/`>>` pair removed (`data.records.bare_step`), all whitespace dropped, and the operands of a
sum or product put in increasing order, so "<<16 - 3=13>>" and "16-3=13" are the same step, and so are "7*2=14"
and "2*7=14" (but not "8-3=5" and "3-8=5"). Definitions, formulas and exclusions are in docs/metrics.md.

Per-problem functions take `valid_orders` (V; at least one order) and `rollouts` (K >= 1 pairs of plan and
correctness). A None plan among readable ones (a plan that failed to decode) counts as an invalid plan;
`diversity_summary` treats a method whose plans are all None as having no plans and reports None for every plan
metric.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from atp_latent.data.records import bare_step
from atp_latent.evaluation.evaluate import pass_at_ks

Order = tuple[str, ...]
Rollout = tuple[Sequence[str] | None, bool]


class ProblemRollouts(NamedTuple):
    """One problem's valid step orders (V) and a method's K rollouts on it, each a (plan or None, correct) pair."""

    valid_orders: Sequence[Sequence[str]]
    rollouts: Sequence[Rollout]


class PlanValidity(NamedTuple):
    """Per-problem breakdown of the K rollouts; the three counts add up to K."""

    valid_and_correct: int
    valid_but_wrong: int
    invalid_plan: int  # not an order in V (right or wrong answer), or no plan at all

    @property
    def n_rollouts(self) -> int:
        return self.valid_and_correct + self.valid_but_wrong + self.invalid_plan

    @property
    def validity(self) -> float:
        """Share of the K plans that are an order in V."""
        return (self.valid_and_correct + self.valid_but_wrong) / self.n_rollouts


# -----------------------------------------------------------------------------
# normalisation


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalise_step(step: str) -> str:
    """A step as compared: without its `<<`/`>>` pair and without any whitespace ("<< 3 + 4=7>>" -> "3+4=7"), and
    the operands of a sum or product of numbers in increasing order ("7*2=14" -> "2*7=14"): which comes first is
    no choice of plan (the synthetic labels write them in a random order, data/synthetic.py _step_string)."""
    text = "".join(bare_step(step).split())
    expr, eq, result = text.partition("=")
    for op in "+*":
        terms = expr.split(op)
        if len(terms) > 1 and all(_NUMBER.fullmatch(t) for t in terms):
            return op.join(sorted(terms, key=lambda t: (float(t), t))) + eq + result
    return text


def normalise_order(steps: Sequence[str]) -> Order:
    """A plan or valid order as a hashable tuple of normalised steps."""
    return tuple(normalise_step(s) for s in steps)


def _checked(valid_orders: Sequence[Sequence[str]], rollouts: Sequence[Rollout]
             ) -> tuple[set[Order], list[tuple[Order | None, bool]]]:
    """V as a set of normalised orders, and each rollout as (its plan if that plan is in V else None, correct)."""
    valid = {normalise_order(o) for o in valid_orders}
    if not valid:
        raise ValueError("a problem needs at least one valid order of its steps, got none")
    if not rollouts:
        raise ValueError("a problem needs at least one rollout, got none")
    checked = []
    for plan, correct in rollouts:
        order = None if plan is None else normalise_order(plan)
        checked.append((order if order in valid else None, bool(correct)))
    return valid, checked


# -----------------------------------------------------------------------------
# per-problem metrics


def plan_validity(valid_orders: Sequence[Sequence[str]], rollouts: Sequence[Rollout]) -> PlanValidity:
    """How many of the K plans are valid orders with a right answer, valid with a wrong answer, or invalid."""
    _, checked = _checked(valid_orders, rollouts)
    return PlanValidity(
        valid_and_correct=sum(o is not None and c for o, c in checked),
        valid_but_wrong=sum(o is not None and not c for o, c in checked),
        invalid_plan=sum(o is None for o, _ in checked),
    )


def distinct_correct_orders(valid_orders: Sequence[Sequence[str]], rollouts: Sequence[Rollout]) -> set[Order]:
    """U: the different valid orders among the rollouts that are valid and right."""
    _, checked = _checked(valid_orders, rollouts)
    return {o for o, c in checked if o is not None and c}


def coverage(valid_orders: Sequence[Sequence[str]], rollouts: Sequence[Rollout]) -> float:
    """|U| / min(|V|, K): how many different valid orders the valid-and-right rollouts used, out of the most
    that K rollouts could use. K counts every rollout, so when K <= |V| a score of 1.0 needs every rollout valid,
    right, and in an order of its own."""
    valid, _ = _checked(valid_orders, rollouts)
    return len(distinct_correct_orders(valid_orders, rollouts)) / min(len(valid), len(rollouts))


def order_entropy(valid_orders: Sequence[Sequence[str]], rollouts: Sequence[Rollout]) -> float | None:
    """Normalised entropy of the orders used by the m valid-and-right rollouts: H / ln(min(|V|, m)), H the
    entropy (natural log) of their empirical distribution; 0 when they all use one order, 1 when they spread as
    evenly as m draws over |V| orders can. None (excluded) when |V| = 1 or m < 2: the normaliser is ln 1 = 0."""
    valid, checked = _checked(valid_orders, rollouts)
    used = Counter(o for o, c in checked if o is not None and c)
    m = sum(used.values())
    if len(valid) == 1 or m < 2:
        return None
    entropy = -sum(n / m * math.log(n / m) for n in used.values())
    return entropy / math.log(min(len(valid), m))


def kendall_tau_distance(plan_a: Sequence[str], plan_b: Sequence[str]) -> float:
    """Normalised Kendall-tau distance between two orders of the same steps: the number of step pairs the two
    put in opposite orders, over n(n-1)/2 (0: same order, 1: reversed). 0 for fewer than two steps.

    A step written twice is matched occurrence by occurrence (the first copy in a with the first in b), so the
    copies are never counted as a discordant pair. Raises ValueError when the step multisets differ."""
    a, b = normalise_order(plan_a), normalise_order(plan_b)
    if Counter(a) != Counter(b):
        raise ValueError(f"Kendall-tau needs two orders of the same steps, got {list(a)} and {list(b)}")
    n = len(a)
    if n < 2:
        return 0.0
    # position in b of each step of a, the k-th copy of a step going to its k-th position in b
    positions: dict[str, list[int]] = {}
    for i, step in enumerate(b):
        positions.setdefault(step, []).append(i)
    seen: Counter[str] = Counter()
    ranks = []
    for step in a:
        ranks.append(positions[step][seen[step]])
        seen[step] += 1
    discordant = sum(ranks[i] > ranks[j] for i in range(n) for j in range(i + 1, n))
    return discordant / (n * (n - 1) / 2)


def mean_pairwise_kendall_distance(valid_orders: Sequence[Sequence[str]], rollouts: Sequence[Rollout]
                                   ) -> float | None:
    """Mean Kendall-tau distance over all pairs of rollouts whose plans are valid (right or wrong answer; two
    rollouts with the same order count as a pair at distance 0). None (excluded from `diversity_summary`'s mean,
    and counted there) when fewer than two plans are valid."""
    _, checked = _checked(valid_orders, rollouts)
    plans = [o for o, _ in checked if o is not None]
    if len(plans) < 2:
        return None
    distances = [kendall_tau_distance(plans[i], plans[j]) for i in range(len(plans)) for j in range(i + 1, len(plans))]
    return sum(distances) / len(distances)


# Why a plan is not a valid order, first reason that applies (docs/metrics.md)
INVALID_REASONS = ("no_plan", "repeated_step", "wrong_step_count", "unknown_step", "dependency_order")


def invalid_plan_reason(valid_orders: Sequence[Sequence[str]], plan: Sequence[str] | None) -> str | None:
    """None for a valid plan, else the first of INVALID_REASONS that applies: no plan at all; a step written
    twice (a step decoder that reads two latent groups as one step); a plan with more or fewer steps than the
    problem; a step that is none of the problem's (an arithmetic slip or a miscopied number); or exactly the
    problem's steps in an order that uses a result before computing it."""
    valid, _ = _checked(valid_orders, [(plan, False)])
    if plan is None:
        return "no_plan"
    order = normalise_order(plan)
    if order in valid:
        return None
    steps = next(iter(valid))
    if len(set(order)) < len(order):
        return "repeated_step"
    if len(order) != len(steps):
        return "wrong_step_count"
    if set(order) != set(steps):
        return "unknown_step"
    return "dependency_order"


def distinct_plans(rollouts: Sequence[Rollout]) -> int:
    """How many different plans (valid or not, after normalisation; no plan counts as one) the K rollouts wrote:
    how much sampling moves a method's plan at all, whatever the plans are worth."""
    return len({None if plan is None else normalise_order(plan) for plan, _ in rollouts})


# -----------------------------------------------------------------------------
# over problems


def _rollouts_per_problem(problems: Sequence[ProblemRollouts]) -> int:
    """K, which every problem must share (pass@k is computed from c right out of the same n)."""
    if not problems:
        raise ValueError("need at least one problem, got none")
    ks = {len(p.rollouts) for p in problems}
    if len(ks) != 1 or 0 in ks:
        raise ValueError(f"every problem needs the same number K >= 1 of rollouts, got {sorted(ks)}")
    return ks.pop()


def pass_at_k_curves(problems: Sequence[ProblemRollouts], strict: bool = False) -> dict[str, float]:
    """pass@k for k = 1, 2, 4, ..., K (and K), averaged over problems (`evaluate.pass_at_ks`). With `strict` a
    rollout counts as right only when its plan is also a valid order."""
    k = _rollouts_per_problem(problems)
    if strict:
        counts = [plan_validity(*p).valid_and_correct for p in problems]
    else:
        counts = [sum(bool(c) for _, c in p.rollouts) for p in problems]
    return pass_at_ks(counts, k)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def diversity_summary(problems: Sequence[ProblemRollouts]) -> dict:
    """Every metric averaged over problems (each problem weighs the same), for one method.

    Keys: n_problems, n_rollouts (K), has_plans; plan_validity and the shares of all rollouts that are
    valid_and_correct / valid_but_wrong / invalid_plan; distinct_correct_orders (mean |U|); coverage;
    order_entropy and kendall_distance (means over the problems where they are defined) with
    order_entropy_excluded and kendall_distance_excluded (how many problems were left out of each mean);
    pass_at_k and strict_pass_at_k ({"1": ..., "2": ..., ..., "K": ...}); distinct_plans (mean count of different
    plans among the K, valid or not) and invalid_reasons (share of all rollouts per INVALID_REASONS entry; they add
    up to invalid_plan).

    A method whose plans are all None (no readable plan) gets None for every plan metric, exclusion count and
    strict_pass_at_k, and still its pass_at_k. A mean over no problems (all excluded) is None."""
    k = _rollouts_per_problem(problems)
    summary: dict = {"n_problems": len(problems), "n_rollouts": k,
                     "pass_at_k": pass_at_k_curves(problems)}
    has_plans = any(plan is not None for p in problems for plan, _ in p.rollouts)
    summary["has_plans"] = has_plans
    plan_keys = ("plan_validity", "valid_and_correct", "valid_but_wrong", "invalid_plan", "distinct_correct_orders",
                 "coverage", "order_entropy", "order_entropy_excluded", "kendall_distance",
                 "kendall_distance_excluded", "strict_pass_at_k", "distinct_plans", "invalid_reasons")
    if not has_plans:
        return summary | dict.fromkeys(plan_keys)

    validity = [plan_validity(*p) for p in problems]
    entropies = [order_entropy(*p) for p in problems]
    kendalls = [mean_pairwise_kendall_distance(*p) for p in problems]
    n_rollouts = k * len(problems)
    reasons = Counter(dict.fromkeys(INVALID_REASONS, 0))
    reasons.update(r for p in problems for plan, _ in p.rollouts
                   if (r := invalid_plan_reason(p.valid_orders, plan)) is not None)
    return summary | {
        "plan_validity": _mean([v.validity for v in validity]),
        "valid_and_correct": sum(v.valid_and_correct for v in validity) / n_rollouts,
        "valid_but_wrong": sum(v.valid_but_wrong for v in validity) / n_rollouts,
        "invalid_plan": sum(v.invalid_plan for v in validity) / n_rollouts,
        "distinct_correct_orders": _mean([len(distinct_correct_orders(*p)) for p in problems]),
        "coverage": _mean([coverage(*p) for p in problems]),
        "order_entropy": _mean([h for h in entropies if h is not None]),
        "order_entropy_excluded": sum(h is None for h in entropies),
        "kendall_distance": _mean([d for d in kendalls if d is not None]),
        "kendall_distance_excluded": sum(d is None for d in kendalls),
        "strict_pass_at_k": pass_at_k_curves(problems, strict=True),
        "distinct_plans": _mean([distinct_plans(p.rollouts) for p in problems]),
        "invalid_reasons": {reason: n / n_rollouts for reason, n in reasons.items()},
    }
