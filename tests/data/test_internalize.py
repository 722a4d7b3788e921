"""iCoT's removal schedule by hand: the scheduled count per batch, the switch to "all", the offset distribution and
when the optimizer is reset."""

import math
import random

import pytest

from atp_latent.data.internalize import ALL, RemovalSchedule, offset_distribution


def test_offset_distribution_by_hand():
    p = offset_distribution(4.0)
    assert len(p) == 100 and sum(p) == pytest.approx(1.0)
    assert p[0] == pytest.approx(1 - math.exp(-4))  # 0.98
    assert p[1] == pytest.approx((1 - math.exp(-4)) * math.exp(-4))
    assert p[98] > 0 and p[99] >= p[98]  # the truncated tail sits on the last offset
    assert offset_distribution(math.inf) == [1.0] + [0.0] * 99


def test_scheduled_tokens_per_batch_by_hand():
    # 40 batches an epoch, 8 tokens an epoch: one more token every 5 batches; everything once 39 are scheduled
    sched = RemovalSchedule(remove_per_epoch=8, remove_all_beyond=39, smoothing_lambda=math.inf)
    assert sched.batches_per_token(40) == 5
    assert [sched.scheduled(b, 40) for b in (0, 4, 5, 9, 10, 39, 40)] == [0, 0, 1, 1, 2, 7, 8]
    assert sched.scheduled(5 * 38, 40) == 38 and sched.scheduled(5 * 39, 40) == ALL
    assert [b for b in range(12) if sched.grows_at(b, 40)] == [5, 10]
    assert RemovalSchedule(start_from=3, remove_all_beyond=None).scheduled(10**6, 40) == 3 + 10**6 // 5
    # fewer batches than tokens per epoch: upstream's counter of 0 adds a token at every batch
    fast = RemovalSchedule(remove_per_epoch=8, remove_all_beyond=None, smoothing_lambda=math.inf)
    assert fast.batches_per_token(3) == 0 and [fast.scheduled(b, 3) for b in range(3)] == [1, 2, 3]


def test_draw_adds_a_smoothing_offset_per_record():
    sched = RemovalSchedule(remove_per_epoch=8, remove_all_beyond=39, smoothing_lambda=1.0)
    ks = sched.draw(12, 40, 4000, random.Random(0))  # s = 2
    assert min(ks) == 2
    share_at_s = ks.count(2) / len(ks)
    assert share_at_s == pytest.approx(1 - math.exp(-1), abs=0.03)  # P(o = 0) = 0.63
    assert ks.count(3) / len(ks) == pytest.approx((1 - math.exp(-1)) * math.exp(-1), abs=0.03)
    assert sched.draw(5 * 39, 40, 3, random.Random(0)) == [ALL] * 3
    assert RemovalSchedule(smoothing_lambda=math.inf).draw(7, 40, 3, random.Random(0)) == [1, 1, 1]
    a, b = (sched.draw(12, 40, 50, random.Random(s)) for s in (1, 1))
    assert a == b  # one rng, one draw: a resumed run redraws the same
