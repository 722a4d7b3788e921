"""Accuracy by the problem's number of solution steps (eval's `by_steps`), on hand-made rows."""

import pytest

from atp_latent.evaluation.evaluate import accuracy_by_steps


def row(steps, correct, latents):
    return {"steps": steps, "correct": correct, "latents": latents}


def test_accuracy_by_steps_pools_the_samples_and_leaves_out_unlabelled_problems():
    """Problems with 3, 2, 3 and no steps, two samples each: 2 steps right 1 of 2 times (latents 2, 4: mean 3),
    3 steps right 3 of 4 times (latents 3, 3, 5, 5: mean 4); the unlabelled problem is in no group; a file
    without step labels gives {}."""
    sample_0 = [row(3, True, 3), row(2, False, 2), row(3, True, 5), row(0, True, 9)]
    sample_1 = [row(3, False, 3), row(2, True, 4), row(3, True, 5), row(0, True, 9)]
    got = accuracy_by_steps([sample_0, sample_1])
    assert list(got) == ["2", "3"]  # in step order, whatever order the problems came in
    assert got["2"] == pytest.approx({"accuracy": 0.5, "mean_latents": 3.0, "problems": 1})
    assert got["3"] == pytest.approx({"accuracy": 0.75, "mean_latents": 4.0, "problems": 2})
    assert accuracy_by_steps([[row(0, True, 1)], [row(0, False, 1)]]) == {}
