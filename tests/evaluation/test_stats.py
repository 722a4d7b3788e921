"""The paired hierarchical bootstrap: hand-checkable cases, the p-value convention, input checks, and a false
positive rate under a null where A and B are the same coin."""

import numpy as np
import pytest

from atp_latent.evaluation import stats
from atp_latent.evaluation.stats import outcome_matrices, paired_bootstrap, verdict


def test_a_right_wherever_b_misses():
    b = np.ones((3, 40))
    b[0, :10] = b[1, 5:15] = b[2, 30:] = 0  # B misses 10 of 40 problems on each seed, A none
    r = paired_bootstrap(np.ones((3, 40)), b)
    assert r.mean_difference == pytest.approx(0.25)
    assert 0 < r.ci_low <= 0.25 <= r.ci_high
    assert r.p_value < 0.01
    assert verdict(r) == "holds"
    assert verdict(r, "A < B") == "does not hold"
    # the same data read the other way round
    assert verdict(paired_bootstrap(b, np.ones((3, 40))), "A < B") == "holds"


def test_identical_outcomes_do_not_hold():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(4, 30))
    r = paired_bootstrap(a, a.copy())
    assert r.mean_difference == 0.0
    assert (r.ci_low, r.ci_high) == (0.0, 0.0)
    assert r.p_value == 1.0  # every replicate is 0: it counts on both sides, 2 * 1 clipped to 1
    assert verdict(r) == verdict(r, "A < B") == "does not hold"


def test_mean_difference_by_hand_from_dicts():
    a = {0: [1, 0, 1, 1], 1: [1, 1, 0, 0]}  # 5 right out of 8
    b = {1: [1, 0, 0, 0], 0: [0, 0, 1, 0]}  # 2 right out of 8; seeds are paired by key, not by position
    r = paired_bootstrap(a, b, n_replicates=200)
    assert r.mean_difference == 3 / 8
    assert (r.n_seeds, r.n_problems, r.n_replicates) == (2, 4, 200)
    swapped = paired_bootstrap({0: a[1], 1: a[0]}, b, n_replicates=200)  # seed 0 of A now faces seed 0 of B
    assert swapped.mean_difference == 3 / 8  # the overall mean does not depend on the pairing...
    assert outcome_matrices(a, b)[1].tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]  # ...but rows follow A's seeds


def test_p_value_and_interval_convention_by_hand():
    # one seed, two problems, A - B = (1, 0). Drawing 2 problems: the mean is 1 with chance 1/4, 1/2 with 1/2,
    # 0 with 1/4. Share <= 0 is 1/4, share >= 0 is 1: p = 2 * 1/4 = 1/2; the 95% interval is [0, 1].
    r = paired_bootstrap([[1, 1]], [[0, 1]], n_replicates=20_000)
    assert r.mean_difference == 0.5
    assert r.p_value == pytest.approx(0.5, abs=0.03)
    assert (r.ci_low, r.ci_high) == (0.0, 1.0)
    assert verdict(r) == "does not hold"  # an interval that touches 0 does not exclude it
    # A - B = (1, -1): share <= 0 and share >= 0 are both 3/4, p = 1.5 clipped to 1
    assert paired_bootstrap([[1, 0]], [[0, 1]]).p_value == 1.0


def test_seeds_are_resampled_too():
    # A beats B by 1 on seed 0 and loses by 1 on seed 1, on every problem: problem draws alone would give a
    # zero-width interval at 0; drawing seeds spreads the replicates over -1, 0 and 1
    a = np.array([[1] * 20, [0] * 20])
    r = paired_bootstrap(a, 1 - a, n_replicates=2000)
    assert r.mean_difference == 0.0
    assert (r.ci_low, r.ci_high) == (-1.0, 1.0)


def test_same_seed_same_result():
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 2, size=(3, 50)), rng.integers(0, 2, size=(3, 50))
    first = paired_bootstrap(a, b, n_replicates=500, rng_seed=11)
    assert paired_bootstrap(a, b, n_replicates=500, rng_seed=11) == first
    other = paired_bootstrap(a, b, n_replicates=500, rng_seed=12)
    assert other.mean_difference == first.mean_difference
    assert (other.ci_low, other.ci_high, other.p_value) != (first.ci_low, first.ci_high, first.p_value)


def test_replicates_drawn_in_chunks_are_all_filled(monkeypatch):
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 7)  # 3 problems -> chunks of 2 replicates: 2, 2, 1
    r = paired_bootstrap([[1, 0, 1]], [[1, 0, 1]], n_replicates=5)
    assert (r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("a,b,message", [
    ([[1, 0, 1]], [[1, 0]], "same \\(seeds, problems\\) shape"),
    ([[1, 0], [0, 1]], [[1, 0]], "same \\(seeds, problems\\) shape"),
    ({0: [1, 0], 1: [0, 1]}, {0: [1, 0], 2: [0, 1]}, "different seeds"),
    ({0: [1, 0], 1: [0, 1, 1]}, {0: [1, 0], 1: [0, 1]}, "one outcome per problem"),
    ({0: [1, 0]}, [[1, 0]], "both be dicts"),
    ([[]], [[]], "at least one of each"),
])
def test_mismatched_outcomes_raise_one_line(a, b, message):
    with pytest.raises(ValueError, match=message) as err:
        paired_bootstrap(a, b)
    assert "\n" not in str(err.value)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="n_replicates"):
        paired_bootstrap([[1]], [[0]], n_replicates=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([[1]], [[0]], confidence=95)
    with pytest.raises(ValueError, match="claim"):
        verdict(paired_bootstrap([[1]], [[0]]), "A >= B")


def test_false_positive_rate_under_the_null():
    # A and B are the same Bernoulli(0.5) coin on 200 simulated data sets; a 5% test should rarely fire
    rng = np.random.default_rng(2024)
    fired = 0
    for i in range(200):
        n_seeds = 1 + i % 3  # 1, 2 and 3 seeds
        a, b = rng.integers(0, 2, size=(2, n_seeds, 60))
        r = paired_bootstrap(a, b, n_replicates=200, rng_seed=i)
        fired += r.p_value < 0.05
        # the p-value and the interval tell the same story (up to quantile interpolation on 200 replicates)
        if r.p_value < 0.04:
            assert verdict(r, "A > B" if r.mean_difference > 0 else "A < B") == "holds"
    assert fired / 200 < 0.10


def test_gap_difference_by_hand():
    """(A - B) in distribution minus (A - B) out of it: A level with B on the first set and 10 of 20 problems ahead on
    the second gives -0.5 exactly; identical sets give [0, 0]; a large consistent effect excludes 0."""
    from atp_latent.evaluation.stats import paired_gap_bootstrap

    same = [[1, 0, 1, 0]] * 2
    a_out, b_out = [[1] * 10 + [0] * 10] * 2, [[0] * 20] * 2
    res = paired_gap_bootstrap(same, same, a_out, b_out, n_replicates=2000)
    assert res.mean_difference == pytest.approx(-0.5) and res.ci_high < 0 and res.n_problems == 24
    res = paired_gap_bootstrap(same, same, same, same, n_replicates=500)
    assert res.mean_difference == 0 and res.ci_low == res.ci_high == 0
    with pytest.raises(ValueError, match="different seeds"):
        paired_gap_bootstrap(same, same, [[1, 0]], [[0, 0]])
