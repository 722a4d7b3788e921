"""pass@k: the unbiased estimator against binomial coefficients and hand-counted cases."""

import math

import pytest

from atp_latent.evaluation.evaluate import pass_at_k, pass_at_ks, right_counts


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # two samples always include a right one when only one is wrong


def test_pass_at_k_equals_the_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    # pass@1 is the share of right samples
    assert pass_at_k(16, 5, 1) == pytest.approx(5 / 16)


@pytest.mark.parametrize("n,c,k", [(4, 1, 0), (4, 1, 5), (4, 5, 1), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(n, c, k)


def test_pass_at_ks_over_problems():
    # 3 samples of 2 problems: problem 0 right once, problem 1 right every time
    samples = [[{"correct": True}, {"correct": True}],
               [{"correct": False}, {"correct": True}],
               [{"correct": False}, {"correct": True}]]
    assert right_counts(samples) == [1, 3]
    got = pass_at_ks(right_counts(samples), 3)
    assert list(got) == ["1", "2", "3"]
    assert got["1"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["2"] == pytest.approx(((1 - 1 / 3) + 1) / 2)  # 1 - C(2,2)/C(3,2)
    assert got["3"] == pytest.approx(1.0)
    assert list(pass_at_ks(right_counts(samples * 2), 6)) == ["1", "2", "4", "6"]
