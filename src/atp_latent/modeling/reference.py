"""A slow reference: one row at a time, the whole sequence recomputed at every latent and answer token.

This is how the published implementations evaluate. It exists to check the engine (tests) and to measure
its speed-up (benchmarks/latent_engine.py); nothing else should call it.
"""

from __future__ import annotations

import torch
from torch import nn


def _last_hidden(lm, embeds: torch.Tensor) -> torch.Tensor:
    return lm.base_model(inputs_embeds=embeds, use_cache=False).last_hidden_state


@torch.no_grad()
def reference_row(
    lm,
    prefix_ids: list[int],
    n_slots: int,
    end_id: int,
    eos_id: int,
    max_new_tokens: int,
    latent_head: nn.Module | None = None,
    stop_head: nn.Module | None = None,
    c: int = 1,
) -> dict:
    """Greedy latent reasoning + answer for one unpadded row. Returns hidden states, logits and tokens."""
    table = lm.get_input_embeddings()
    device = table.weight.device
    embeds = table(torch.tensor([prefix_ids], device=device))
    latent_hidden, zs = [], []
    for t in range(n_slots):
        h = _last_hidden(lm, embeds)[:, -1]
        z = latent_head(h)[0] if latent_head is not None else h
        if stop_head is not None and t % c == 0:
            logits = stop_head(z)
            if logits[0, 1] > logits[0, 0]:
                break
        zs.append(z[0])
        embeds = torch.cat([embeds, z[:, None].to(table.weight.dtype)], dim=1)
        latent_hidden.append(_last_hidden(lm, embeds)[0, -1])
    cur = torch.tensor([[end_id]], device=device)
    tokens, step_logits = [], []
    for _ in range(max_new_tokens):
        embeds = torch.cat([embeds, table(cur)], dim=1)
        logits = lm.get_output_embeddings()(_last_hidden(lm, embeds)[:, -1])
        step_logits.append(logits[0])
        nxt = int(logits.argmax(-1))
        tokens.append(nxt)
        if nxt == eos_id:
            break
        cur = torch.tensor([[nxt]], device=device)
    return {"tokens": tokens, "logits": step_logits, "latent_hidden": latent_hidden, "z": zs}
