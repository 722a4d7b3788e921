"""Reasoning-path diversity metrics on hand-made problems whose valid orders are known, against hand-computed
values (each metric has a case where an off-by-one or a wrong normaliser gives a different number)."""

import math

import pytest

from atp_latent.data.records import Problem
from atp_latent.data.synthetic import valid_orders
from atp_latent.evaluation.diversity import (
    PlanValidity,
    ProblemRollouts,
    coverage,
    distinct_correct_orders,
    distinct_plans,
    diversity_summary,
    invalid_plan_reason,
    kendall_tau_distance,
    mean_pairwise_kendall_distance,
    normalise_order,
    normalise_step,
    order_entropy,
    pass_at_k_curves,
    plan_validity,
)

# a and b are independent, c needs both: two valid orders
A, B, C = "3+4=7", "2*5=10", "7+10=17"
AB = [A, B, C]
BA = [B, A, C]
V2 = [AB, BA]
# three independent steps and a last one that needs all three: 3! = 6 valid orders
X, Y, Z, W = "3+4=7", "2*5=10", "6*2=12", "7+10+12=29"
V6 = [[X, Y, Z, W], [X, Z, Y, W], [Y, X, Z, W], [Y, Z, X, W], [Z, X, Y, W], [Z, Y, X, W]]
# a chain: one valid order
V1 = [["2+3=5", "5*4=20"]]


def test_the_hand_made_orders_are_what_valid_orders_finds():
    two = Problem(question="Ann has 3 red and 4 blue pens. Bob has 2 boxes of 5 pens. How many in all?",
                  steps=AB, answer="17")
    assert valid_orders(two) == V2
    six = Problem(question="3 and 4, 2 and 5, 6 and 2.", steps=[X, Y, Z, W], answer="29")
    assert sorted(valid_orders(six)) == sorted(V6)


def test_steps_are_normalised_before_comparing():
    assert normalise_step("<< 3 + 4 = 7 >>") == "3+4=7"
    assert normalise_step(" 3+4=7 ") == "3+4=7"
    rollouts = [(["<<3+4=7>>", "<<2 * 5=10>>", "7 + 10 = 17"], True)]
    assert plan_validity(V2, rollouts) == PlanValidity(1, 0, 0)
    # the valid orders are normalised too
    assert plan_validity([["<<3+4=7>>", "2*5=10", "7+10=17"]], [(AB, True)]).valid_and_correct == 1


def test_commuted_operands_are_the_same_step():
    """The synthetic labels write a sum's or product's operands in a random order (7*2 or 2*7), so a plan that writes
    them the other way round is the same plan; a difference or quotient keeps its order."""
    assert normalise_step("7*2=14") == normalise_step("<<2 * 7=14>>") == "2*7=14"
    assert normalise_step("10+3+-4=9") == "-4+3+10=9" and normalise_step("3.5+12=15.5") == "3.5+12=15.5"
    assert normalise_step("8-3=5") != normalise_step("3-8=5") and normalise_step("8/2=4") == "8/2=4"
    assert normalise_step("3-2+1=2") == "3-2+1=2"  # mixed operators: left as written
    swapped = [["4+3=7", "5*2=10", "10+7=17"]]  # every step of AB commuted
    assert plan_validity(V2, [(swapped[0], True)]) == PlanValidity(1, 0, 0)
    assert distinct_correct_orders(V2, [(swapped[0], True), (AB, True)]) == {normalise_order(AB)}
    assert plan_validity(V2, [(["4-3=1", "5*2=10", "10+7=17"], True)]) == PlanValidity(0, 0, 1)


def test_plan_validity_breakdown():
    rollouts = [
        (AB, True),  # valid and right
        (BA, True),  # valid and right
        (AB, False),  # valid, wrong answer
        ([C, A, B], True),  # right answer but not a valid order: still an invalid plan
        (None, False),  # no plan among readable ones: invalid
        ([A, B], True),  # a step missing
    ]
    v = plan_validity(V2, rollouts)
    assert v == PlanValidity(valid_and_correct=2, valid_but_wrong=1, invalid_plan=3)
    assert v.n_rollouts == 6
    assert v.validity == pytest.approx(3 / 6)


def test_distinct_orders_and_coverage_with_k_below_and_above_the_number_of_orders():
    # K = 2 < |V| = 6, both right in different orders: 2 / min(6, 2) = 1 (a normaliser of |V| would give 1/3)
    assert coverage(V6, [(V6[0], True), (V6[3], True)]) == 1.0
    # K = 8 > |V| = 6, three distinct right orders: 3 / min(6, 8) = 1/2 (a normaliser of K would give 3/8)
    rollouts = [(V6[0], True), (V6[0], True), (V6[1], True), (V6[2], True),
                (V6[4], False), ([W, X, Y, Z], True), (None, True), (V6[1], True)]
    assert distinct_correct_orders(V6, rollouts) == {normalise_order(V6[k]) for k in range(3)}
    assert coverage(V6, rollouts) == pytest.approx(0.5)
    # K = 4 > |V| = 2
    assert coverage(V2, [(AB, True)] * 3 + [(BA, True)]) == 1.0
    assert coverage(V2, [(AB, True)] * 3 + [(BA, False)]) == 0.5
    # K = 1: the one rollout can reach one order at most
    assert coverage(V2, [(BA, True)]) == 1.0
    assert coverage(V2, [(BA, False)]) == 0.0


def test_order_entropy_normalisation():
    # m = 4 right rollouts over |V| = 2: 3 in one order, 1 in the other
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert order_entropy(V2, [(AB, True)] * 3 + [(BA, True)]) == pytest.approx(h / math.log(2))
    assert order_entropy(V2, [(AB, True), (BA, True)]) == pytest.approx(1.0)
    assert order_entropy(V2, [(AB, True)] * 3) == 0.0
    # m = 3 distinct orders out of |V| = 6: normalised by ln min(6, 3) = ln 3 -> 1 (ln 6 would give 0.61)
    assert order_entropy(V6, [(V6[0], True), (V6[1], True), (V6[2], True)]) == pytest.approx(1.0)
    # m = 4 over |V| = 6 as 2, 1, 1: H / ln 4 = 0.75
    four = [(V6[0], True), (V6[0], True), (V6[1], True), (V6[5], True)]
    assert order_entropy(V6, four) == pytest.approx(0.75)
    # wrong answers and invalid plans are not among the m
    noise = [(V6[2], False), ([W, X, Y, Z], True), (None, True)]
    assert order_entropy(V6, four + noise) == pytest.approx(0.75)


def test_order_entropy_exclusions():
    assert order_entropy(V1, [(V1[0], True)] * 4) is None  # |V| = 1
    assert order_entropy(V2, [(AB, True), (BA, False), (None, True)]) is None  # m = 1
    assert order_entropy(V2, [(AB, False), (BA, False)]) is None  # m = 0
    assert order_entropy(V2, [(AB, True), (AB, True)]) == 0.0  # m = 2 is enough


def test_kendall_tau_distance_by_hand():
    assert kendall_tau_distance([A, B, C], [C, B, A]) == 1.0
    assert kendall_tau_distance([A, B, C], [B, A, C]) == pytest.approx(1 / 3)
    assert kendall_tau_distance([A, B, C], [A, B, C]) == 0.0
    # 4 steps, 2 discordant pairs (a-b and c-d) out of 6; n(n+1)/2 or n^2 would not give 1/3
    assert kendall_tau_distance(["a", "b", "c", "d"], ["b", "a", "d", "c"]) == pytest.approx(2 / 6)
    assert kendall_tau_distance(["a", "b", "c", "d"], ["d", "a", "b", "c"]) == pytest.approx(3 / 6)
    assert kendall_tau_distance(["a"], ["a"]) == 0.0
    assert kendall_tau_distance(["<<a>>", "b"], ["b", "a"]) == 1.0  # normalised first


def test_kendall_tau_distance_with_a_repeated_step():
    # copies matched in order: x1 -> 0, x2 -> 2, y -> 1; one discordant pair (x2, y) out of 3
    assert kendall_tau_distance(["x", "x", "y"], ["x", "y", "x"]) == pytest.approx(1 / 3)
    assert kendall_tau_distance(["x", "x", "y"], ["y", "x", "x"]) == pytest.approx(2 / 3)


def test_kendall_tau_distance_needs_the_same_steps():
    with pytest.raises(ValueError, match="same steps"):
        kendall_tau_distance([A, B, C], [A, B])
    with pytest.raises(ValueError, match="same steps"):
        kendall_tau_distance([A, B], [A, C])


def test_mean_pairwise_kendall_distance():
    # valid plans AB, AB, BA (one of them wrong, still counted); pairs: 0, 1/3, 1/3 -> 2/9
    rollouts = [(AB, True), (AB, False), (BA, True), ([C, A, B], True), (None, False)]
    assert mean_pairwise_kendall_distance(V2, rollouts) == pytest.approx(2 / 9)
    assert mean_pairwise_kendall_distance(V2, [(AB, True), (AB, True)]) == 0.0
    # fewer than two valid plans: excluded
    assert mean_pairwise_kendall_distance(V2, [(AB, True), ([C, A, B], True)]) is None
    assert mean_pairwise_kendall_distance(V2, [(None, True)]) is None


def test_pass_at_k_curves_plain_and_strict():
    one = ProblemRollouts(V2, [(AB, True), ([C, A, B], True), (BA, False), (None, False)])  # c = 2, strict 1
    two = ProblemRollouts(V2, [([C, B, A], True), (AB, False), (BA, False), (None, False)])  # c = 1, strict 0
    plain = pass_at_k_curves([one, two])
    assert list(plain) == ["1", "2", "4"]
    # pass@2 with c of 4 right: 1 - C(4-c, 2) / C(4, 2): c = 2 -> 5/6, c = 1 -> 1/2
    assert plain["1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert plain["2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert plain["4"] == 1.0
    strict = pass_at_k_curves([one, two], strict=True)
    assert strict["1"] == pytest.approx((1 / 4 + 0) / 2)
    assert strict["2"] == pytest.approx((1 / 2 + 0) / 2)
    assert strict["4"] == pytest.approx(0.5)


def test_every_problem_needs_the_same_k_and_at_least_one_valid_order():
    with pytest.raises(ValueError, match="same number K"):
        pass_at_k_curves([ProblemRollouts(V2, [(AB, True)]), ProblemRollouts(V2, [(AB, True)] * 2)])
    with pytest.raises(ValueError, match="at least one problem"):
        diversity_summary([])
    with pytest.raises(ValueError, match="at least one valid order"):
        coverage([], [(AB, True)])
    with pytest.raises(ValueError, match="at least one rollout"):
        plan_validity(V2, [])


PROBLEMS = [
    # validity 1; U = 2 orders -> coverage 1; entropy of (2, 1) / ln 2; Kendall: 3 of 6 pairs at 1/3 -> 1/6
    ProblemRollouts(V2, [(AB, True), (AB, True), (BA, True), (AB, False)]),
    # validity 1/2; U = 1 -> coverage 1/2; entropy excluded (m = 1); Kendall: one pair at 1/3
    ProblemRollouts(V2, [(AB, True), ([C, A, B], True), (None, False), (BA, False)]),
    # one valid order: coverage 1/min(1, 4) = 1; entropy excluded (|V| = 1); Kendall 0 (included)
    ProblemRollouts(V1, [(V1[0], True)] * 4),
]


def test_diversity_summary_by_hand():
    s = diversity_summary(PROBLEMS)
    assert s["n_problems"] == 3 and s["n_rollouts"] == 4 and s["has_plans"] is True
    assert s["plan_validity"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert s["valid_and_correct"] == pytest.approx((3 + 1 + 4) / 12)
    assert s["valid_but_wrong"] == pytest.approx((1 + 1 + 0) / 12)
    assert s["invalid_plan"] == pytest.approx((0 + 2 + 0) / 12)
    assert s["distinct_correct_orders"] == pytest.approx((2 + 1 + 1) / 3)
    assert s["coverage"] == pytest.approx((1 + 0.5 + 1) / 3)
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert s["order_entropy"] == pytest.approx(h / math.log(2))
    assert s["order_entropy_excluded"] == 2
    assert s["kendall_distance"] == pytest.approx((1 / 6 + 1 / 3 + 0) / 3)
    assert s["kendall_distance_excluded"] == 0
    # right answers 3, 2, 4 of 4; strict (valid and right) 3, 1, 4
    assert s["distinct_plans"] == pytest.approx((2 + 4 + 1) / 3)  # AB, BA; AB, CAB, None, BA; one
    # the two invalid plans (problem 2): CAB uses 7 and 10 before computing them; None is no plan
    assert s["invalid_reasons"] == {"no_plan": 1 / 12, "repeated_step": 0, "wrong_step_count": 0, "unknown_step": 0,
                                    "dependency_order": 1 / 12}
    assert s["pass_at_k"]["1"] == pytest.approx((3 + 2 + 4) / 12)
    assert s["strict_pass_at_k"]["1"] == pytest.approx((3 + 1 + 4) / 12)
    assert s["strict_pass_at_k"]["2"] == pytest.approx((1 + 1 / 2 + 1) / 3)


def test_why_a_plan_is_invalid():
    """The first reason that applies, in the order no plan, a repeated step, a wrong step count, a step that is
    none of the problem's, an order against the dependencies; a valid plan has none."""
    assert invalid_plan_reason(V2, AB) is None and invalid_plan_reason(V2, ["<<2 * 5=10>>", A, C]) is None
    assert invalid_plan_reason(V2, None) == "no_plan"
    assert invalid_plan_reason(V2, [A, A, C]) == "repeated_step"  # right length, B read as A
    assert invalid_plan_reason(V2, [A, A, B, C]) == "repeated_step"  # repeated beats too long
    assert invalid_plan_reason(V2, [A, C]) == "wrong_step_count"
    assert invalid_plan_reason(V2, [A, B, C, "17+1=18"]) == "wrong_step_count"
    assert invalid_plan_reason(V2, [A, "2*5=11", C]) == "unknown_step"  # an arithmetic slip
    assert invalid_plan_reason(V2, [C, B, A]) == "dependency_order"
    assert invalid_plan_reason(V1, ["5*4=20", "2+3=5"]) == "dependency_order"


def test_distinct_plans_counts_every_plan_once_after_normalisation():
    assert distinct_plans([(AB, True), (["<<3 + 4=7>>", "5*2=10", C], False), (BA, True)]) == 2
    assert distinct_plans([(AB, True), (None, False), (None, True), ([A, A, C], False)]) == 3
    assert distinct_plans([(AB, True)] * 8) == 1


def test_diversity_summary_counts_kendall_exclusions_and_empty_means():
    s = diversity_summary([ProblemRollouts(V2, [(AB, True), (None, False)])])
    assert s["kendall_distance"] is None and s["kendall_distance_excluded"] == 1
    assert s["order_entropy"] is None and s["order_entropy_excluded"] == 1
    assert s["coverage"] == 0.5  # one right valid order out of min(|V| = 2, K = 2)


def test_diversity_summary_without_readable_plans():
    planless = [ProblemRollouts(p.valid_orders, [(None, c) for _, c in p.rollouts]) for p in PROBLEMS]
    s = diversity_summary(planless)
    assert s["has_plans"] is False
    for key in ("plan_validity", "valid_and_correct", "valid_but_wrong", "invalid_plan", "distinct_correct_orders",
                "coverage", "order_entropy", "order_entropy_excluded", "kendall_distance",
                "kendall_distance_excluded", "strict_pass_at_k", "distinct_plans", "invalid_reasons"):
        assert s[key] is None, key
    assert s["pass_at_k"] == diversity_summary(PROBLEMS)["pass_at_k"]
    # a method without plans needs no valid orders (e.g. problems that come without steps)
    assert diversity_summary([ProblemRollouts([], [(None, True), (None, False)])])["pass_at_k"]["1"] == 0.5
