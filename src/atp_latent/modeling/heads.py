"""The two small heads of ATP-Latent (METHOD.md §4-§5)."""

from __future__ import annotations

import torch
from torch import nn

# Keeps exp(logvar) finite in fp32 and bf16 and the Gaussian log-density well conditioned.
LOGVAR_MIN, LOGVAR_MAX = -12.0, 6.0


class LatentHead(nn.Module):
    """Maps a last-layer hidden state h to (mu, logvar) of the latent's Gaussian; the latent z is the embedding."""

    def __init__(self, hidden_size: int):
        super().__init__()
        d = hidden_size
        self.trunk = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        self.mu = nn.Linear(d, d)
        self.logvar = nn.Linear(d, d)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk(h)
        return self.mu(x), self.logvar(x).clamp(LOGVAR_MIN, LOGVAR_MAX)


class StopHead(nn.Module):
    """Reads a freshly produced latent z and scores (continue, stop)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        d = hidden_size
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return (-0.5 * (logvar + (z - mu) ** 2 * torch.exp(-logvar) + torch.log(torch.tensor(2 * torch.pi)))).sum(-1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per dimension (same shape as mu)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
