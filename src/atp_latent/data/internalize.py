"""iCoT's removal schedule (stepwise internalization, Deng, Choi & Shieber 2024): how many chain-of-thought tokens
each record loses from the front of its chain at a given batch, as `da03/Internalize_CoT_Step_by_Step` does it.

    s(b)   = start_from + b // round(batches_per_epoch / remove_per_epoch)      (b: batches since the start)
           = all tokens, once s reaches remove_all_beyond
    k      = s + o, o ~ P(o) = (1 - e^-lambda) e^(-lambda o) on 0..99, the leftover mass on 99 (lambda = inf: o = 0)

A record then trains on `question <|start-latent|><|end-latent|> <chain minus its first k tokens> ### answer`.
The optimizer is reset each time s grows, unless the previous batch had already lost all its chain.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

ALL = 10**9  # "every token": more than any chain has


def offset_distribution(smoothing_lambda: float, truncate: int = 100) -> list[float]:
    """P(o) for o in 0..truncate-1: (1 - e^-lambda) e^(-lambda o), the mass beyond put on the last; lambda = inf
    gives o = 0."""
    if math.isinf(smoothing_lambda):
        return [1.0] + [0.0] * (truncate - 1)
    p = [(1 - math.exp(-smoothing_lambda)) * math.exp(-smoothing_lambda * o) for o in range(truncate)]
    p[-1] += 1 - sum(p)
    return p


@dataclass(frozen=True)
class RemovalSchedule:
    remove_per_epoch: float = 8.0  # tokens per epoch (upstream's Delta)
    remove_all_beyond: int | None = 39  # s >= this: the whole chain goes (None: never)
    smoothing_lambda: float = 4.0  # math.inf: no random offset
    start_from: int = 0

    def batches_per_token(self, batches_per_epoch: int) -> int:
        return int(round(batches_per_epoch / self.remove_per_epoch))

    def scheduled(self, batch: int, batches_per_epoch: int) -> int:
        """s at global batch `batch` (0-based): ALL once it reaches remove_all_beyond."""
        every = self.batches_per_token(batches_per_epoch)
        s = self.start_from + (batch // every if every else batch + 1)  # upstream: 0 means one more every batch
        if self.remove_all_beyond is not None and s >= self.remove_all_beyond:
            return ALL
        return s

    def draw(self, batch: int, batches_per_epoch: int, n: int, rng: random.Random) -> list[int]:
        """k for each of the n records of this batch: s plus a smoothing offset each."""
        s = self.scheduled(batch, batches_per_epoch)
        if s >= ALL:
            return [ALL] * n
        weights = offset_distribution(self.smoothing_lambda)
        if weights[0] == 1.0:
            return [s] * n
        return [s + o for o in rng.choices(range(len(weights)), weights=weights, k=n)]

    def grows_at(self, batch: int, batches_per_epoch: int) -> bool:
        """Whether s grows at this batch (the optimizer is reset then)."""
        return batch > 0 and self.scheduled(batch, batches_per_epoch) > self.scheduled(batch - 1, batches_per_epoch)
