"""Stops for NaN and inf in a training step, shared by the SFT and RL loops.

In bf16 and fp32 a non-finite loss or gradient norm is divergence: the run stops at that step, naming where, before
the optimizer writes NaN into the weights. Under fp16 loss scaling (accelerate's GradScaler) a non-finite gradient
norm after unscaling is how the scaler finds an overflow, certain in a run's first steps: it skips that optimizer
step itself and lowers its scale, so the run goes on, and only many skipped steps in a row are divergence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def first_nonfinite_grad(model: torch.nn.Module) -> str:
    """The name of the first parameter, in the model's order, whose gradient holds a NaN or an inf."""
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return "no parameter (the norm itself overflowed)"


class NonFiniteGuard:
    """Checks a step's loss (`check_loss`, after the forward) and gradient norm (`step_ok`, before the optimizer
    step). Loss scaling is on when the accelerator has a GradScaler (`accelerator.scaler`): fp16 on a GPU; bf16,
    fp32 and fp16 on a CPU (where accelerate makes no scaler and trains in fp32) have none."""

    def __init__(self, accelerator, max_skipped: int = 20):
        self.accelerator = accelerator
        self.scaler = getattr(accelerator, "scaler", None)
        # 20 halvings take the scale from 2^16 to 2^-4: no longer an overflow of the scaled gradients
        self.max_skipped = max_skipped
        self.in_a_row = 0  # skipped steps since the last update
        self.skipped = 0  # skipped steps since this guard was made

    def check_loss(self, loss: torch.Tensor, describe: Callable[[], str]) -> None:
        """Raise FloatingPointError on every process when the loss of any process is not finite, so that all stop
        at this step together (one all-reduce of a flag per process) instead of the others waiting for it in the
        next collective. The process whose loss it was raises `describe()` (with its index when there are several),
        the others name it."""
        bad_here = not bool(torch.isfinite(loss.detach()).all())
        acc = self.accelerator
        if acc.num_processes == 1:
            if bad_here:
                raise FloatingPointError(describe())
            return
        flags = torch.zeros(acc.num_processes, device=loss.device)
        flags[acc.process_index] = float(bad_here)
        bad = [i for i, f in enumerate(acc.reduce(flags, "sum").tolist()) if f > 0]
        if bad_here:
            raise FloatingPointError(f"{describe()} on process {acc.process_index}")
        if bad:
            raise FloatingPointError(f"non-finite loss on process {', '.join(map(str, bad))} (finite here); every "
                                     "process stops with it")

    def step_ok(self, grad_norm: torch.Tensor, describe: Callable[[], str]) -> bool:
        """Whether the coming optimizer step updates the weights. A finite norm: True. A non-finite one without loss
        scaling: FloatingPointError(describe()). Under loss scaling: False, a step the scaler skips; call
        optimizer.step() all the same (the scaler skips the update and lowers its scale there), and after
        max_skipped such steps in a row raise FloatingPointError. The norm is the same on every process (gradients
        are all-reduced before it), so every process decides alike."""
        if bool(torch.isfinite(grad_norm)):
            self.in_a_row = 0
            return True
        if self.scaler is None:
            raise FloatingPointError(describe())
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.max_skipped:
            raise FloatingPointError(f"{describe()}: {self.in_a_row} optimizer steps in a row skipped by fp16 loss "
                                     f"scaling (loss scale {self.scaler.get_scale():g}), which lowering the scale "
                                     "does not cure")
        return False
