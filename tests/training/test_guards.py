"""NonFiniteGuard: what stops a run on a NaN or an inf, and what, under fp16 loss scaling, is a skipped step."""

import pytest
import torch

from atp_latent.training.guards import NonFiniteGuard


class FakeAccelerator:
    """What the guard reads of an accelerator: its loss scaler and its processes. `reduce` adds `others`, the flags
    the other processes contribute to the all-reduce."""

    def __init__(self, scaler=None, num_processes=1, process_index=0, others=None):
        self.scaler, self.num_processes, self.process_index = scaler, num_processes, process_index
        self.others = others

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        return tensor + self.others


def describe():
    return "non-finite gradient at step 7 (first in w)"


def test_without_loss_scaling_a_nonfinite_gradient_stops_at_once():
    """bf16 and fp32 (and fp16 on a CPU, where accelerate has no scaler): a NaN or inf norm is divergence."""
    guard = NonFiniteGuard(FakeAccelerator(scaler=None))
    assert guard.step_ok(torch.tensor(3.0), describe)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match=r"^non-finite gradient at step 7 \(first in w\)$"):
            guard.step_ok(torch.tensor(bad), describe)


def test_fp16_overflow_is_a_skipped_step_until_too_many_in_a_row():
    """Under fp16 loss scaling an overflow is a step the scaler skips (weights untouched, scale halved); a finite
    norm resets the count; max_skipped overflows in a row stop the run."""
    layer = torch.nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(layer.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    guard = NonFiniteGuard(FakeAccelerator(scaler=scaler), max_skipped=3)

    def step(overflow: bool) -> bool:
        optimizer.zero_grad()
        loss = layer(torch.ones(1, 3)).sum()
        if overflow:  # adds 0, and its gradient is inf * 0 = NaN in every entry of the weight
            loss = loss + torch.sqrt((layer.weight * 0.0).sum())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        ok = guard.step_ok(torch.nn.utils.clip_grad_norm_(layer.parameters(), float("inf")), describe)
        before = layer.weight.detach().clone()
        scaler.step(optimizer)  # the loop steps either way: the scaler skips the update and lowers its scale
        scaler.update()
        assert torch.equal(before, layer.weight) != ok
        return ok

    assert [step(o) for o in (True, True, False, True, True)] == [False, False, True, False, False]
    assert guard.skipped == 4 and scaler.get_scale() == 2.0**12
    with pytest.raises(FloatingPointError, match=r"step 7 .*3 optimizer steps in a row skipped .*loss scale 4096"):
        step(True)


def test_nonfinite_loss_on_one_process_stops_every_process():
    """Each process learns whether any process's loss is not finite (one all-reduce), so all stop together; the one
    whose loss it was says which term, the others which process."""
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    NonFiniteGuard(FakeAccelerator()).check_loss(one, lambda: "unused")
    with pytest.raises(FloatingPointError, match=r"^non-finite loss at step 2 \(term: kl\)$"):
        NonFiniteGuard(FakeAccelerator()).check_loss(nan, lambda: "non-finite loss at step 2 (term: kl)")
    quiet = FakeAccelerator(num_processes=3, process_index=0, others=torch.zeros(3))
    NonFiniteGuard(quiet).check_loss(one, lambda: "unused")
    here = FakeAccelerator(num_processes=3, process_index=1, others=torch.zeros(3))
    with pytest.raises(FloatingPointError, match=r"^non-finite loss at step 2 \(term: kl\) on process 1$"):
        NonFiniteGuard(here).check_loss(nan, lambda: "non-finite loss at step 2 (term: kl)")
    elsewhere = FakeAccelerator(num_processes=3, process_index=0, others=torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(FloatingPointError, match=r"non-finite loss on process 1, 2 .*stops with"):
        NonFiniteGuard(elsewhere).check_loss(one, lambda: "unused")
