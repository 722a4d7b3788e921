"""Frozen weights under autocast: cast once per call, not once per pass.

Autocast keeps a cast of a weight for the rest of its region only when the weight requires grad. A frozen fp32
weight (a LoRA base layer, a frozen decoder, the RL reference policy) is cast to bf16 again at every call of its
layer, and under autograd each copy is saved for the backward pass. The latent loop calls the LM once per latent,
so one scored CoLaR-RL minibatch (8 rows, 64 latents) held 64 copies of a 1B model's weights and ran out of an
H200's memory (2026-12-04, results/gpu/). `frozen_weight_casts` casts each frozen linear weight once for the call
and lends the layer that copy; the matmuls see the same bf16 values autocast would have made, so results are
bitwise the same, and backward saves one copy per layer.

    frozen Linear.weight (fp32 Parameter) --.to(bf16) once--> lent to the layer for the call --> restored after
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn


def _sharded(module: nn.Module) -> bool:
    """FSDP (1 or 2) inside: it swaps its layers' parameters itself as it gathers and frees them."""
    try:
        from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    except ImportError:  # pragma: no cover - a torch built without distributed
        return False
    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in module.modules())


def _linear_types() -> tuple[type, ...]:
    try:  # GPT-2's linear layers (weight stored (in, out); autocast casts its addmm the same way)
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return (nn.Linear,)
    return nn.Linear, Conv1D


@contextlib.contextmanager
def frozen_weight_casts(module: nn.Module):
    """Within the block, every linear layer of `module` whose weight is a frozen floating-point tensor of another
    dtype than the active autocast dtype holds a cast copy of its weight (and frozen bias). Nothing happens outside
    autocast, or under FSDP (not measured there). Re-entrant: an inner use finds the weights already cast."""
    param = next(module.parameters(), None)
    device_type = param.device.type if param is not None else "cpu"
    if param is None or not torch.is_autocast_enabled(device_type) or _sharded(module):
        yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    lent: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for layer in module.modules():
            if not isinstance(layer, _linear_types()):
                continue
            for name in ("weight", "bias"):
                p = layer._parameters.get(name)
                if p is not None and not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                    # a plain tensor in _parameters: what torch.func.functional_call does to substitute a parameter
                    layer._parameters[name] = p.detach().to(dtype)
                    lent.append((layer, name, p))
        yield
    finally:
        for layer, name, p in reversed(lent):
            layer._parameters[name] = p


def casts_frozen_weights(method):
    """Decorate a module method so that it runs inside `frozen_weight_casts(self)`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with frozen_weight_casts(self):
            return method(self, *args, **kwargs)

    return wrapper
