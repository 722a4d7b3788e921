"""The two small heads of ATP-Latent (METHOD.md §4-§5), and CODI's projector and distillation loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Keeps exp(logvar) finite in fp32 and bf16 and the Gaussian log-density well conditioned. The bound is soft
# (see soft_clamp): a hard clamp would zero the gradient of every dimension beyond it (docs/deviations.md).
LOGVAR_MIN, LOGVAR_MAX = -12.0, 6.0


def soft_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """A smooth clamp into (lo, hi): identity to within exp(-(x - lo)) + exp(-(hi - x)) in the middle, with a
    non-zero gradient everywhere (softplus on each side)."""
    return hi - F.softplus(hi - (lo + F.softplus(x - lo)))


class LatentHead(nn.Module):
    """Maps a last-layer hidden state h to (mu, logvar) of the latent's Gaussian; the latent z is the embedding.

    `residual=True` (ours, off by default) computes mu = h + mu(trunk(h)) with mu's layer zero-initialised, so
    training starts from Coconut's feedback (z = h plus noise). `init_logvar` (ours) starts every latent's
    log-variance there (logvar layer zero weight, that bias), i.e. sigma = exp(init_logvar / 2)."""

    def __init__(self, hidden_size: int, residual: bool = False, init_logvar: float | None = None):
        super().__init__()
        d = hidden_size
        self.residual = residual
        self.trunk = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        self.mu = nn.Linear(d, d)
        self.logvar = nn.Linear(d, d)
        if residual:
            nn.init.zeros_(self.mu.weight)
            nn.init.zeros_(self.mu.bias)
        if init_logvar is not None:
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, init_logvar)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(h)
        logvar = self.logvar(x)
        if self.residual:
            return h + self.mu(x), soft_clamp(logvar.float(), LOGVAR_MIN, LOGVAR_MAX).to(logvar.dtype)
        return self.mu(x), soft_clamp(logvar.float(), LOGVAR_MIN, LOGVAR_MAX).to(logvar.dtype)


class StopHead(nn.Module):
    """Reads a freshly produced latent z and scores (continue, stop). `detached` (an ablation, off in the method)
    reads z.detach(): the stop loss then trains this head only and never reaches the latent head or the LM."""

    def __init__(self, hidden_size: int, detached: bool = False):
        super().__init__()
        d = hidden_size
        self.detached = detached
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z.detach() if self.detached else z)


class Projector(nn.Module):
    """CODI's latent feedback (`prj`): the next latent's input embedding is LayerNorm(W2 GELU(W1 h)), with W1: d -> p
    and W2: p -> d (upstream's leading Dropout(0) is the identity and left out)."""

    def __init__(self, hidden_size: int, dim: int | None = None):
        super().__init__()
        d, p = hidden_size, dim or hidden_size
        self.mlp = nn.Sequential(nn.Linear(d, p), nn.GELU(), nn.Linear(p, d), nn.LayerNorm(d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "smooth_l1",
                 div_std: bool = True) -> torch.Tensor:
    """CODI's distillation between per-layer hidden states [n_layers, B, d] at one position per row: for each layer
    the mean SmoothL1 (default) or squared error over the batch's rows and dimensions, divided by the std of the
    teacher's states at that layer (over the same rows and dimensions; std^2 for l2) when `div_std`, then averaged
    over layers. The teacher is detached here: it is a target. In fp32 whatever the inputs' dtype."""
    s, t = student.float(), teacher.detach().float()
    if kind == "smooth_l1":
        per_layer = F.smooth_l1_loss(s, t, reduction="none").flatten(1).mean(-1)
    elif kind == "l2":
        per_layer = F.mse_loss(s, t, reduction="none").flatten(1).mean(-1)
    else:
        raise ValueError(f"unknown distill_loss {kind!r} (known: smooth_l1, l2)")
    if div_std:
        std = t.flatten(1).std(-1)
        per_layer = per_layer / (std * std if kind == "l2" else std)
    return per_layer.mean()


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """log N(z; mu, temperature^2 exp(logvar)) summed over the last dimension, in fp32 whatever the inputs' dtype: a
    bf16 sum of 2048 terms of size ~1 carries rounding errors far beyond the PPO clip range. `temperature` is RL's
    latent exploration k (rollouts sample N(mu, (k sigma)^2))."""
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    if temperature != 1.0:
        logvar = logvar + 2.0 * math.log(temperature)
    return (-0.5 * (logvar + (z - mu) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension (same shape as mu), in fp32."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
