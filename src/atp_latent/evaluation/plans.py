"""A rollout's plan: the steps a method's reasoning reads as, for the diversity metrics (evaluation/diversity.py).

    CoT-SFT (chain "text")           the steps it wrote: each `<<...>>` of its output, in order
    a method with a step decoder     each latent group decoded to text (ATP, SIM-CoT), the groups' steps in order
    any other method                 None: its latents have no readable plan

The decoder reads the groups greedily (decode_plans: all groups of a batch in one KV-cached decode, each distinct
group once), the same reading `explain` shows and RL's coherence reward scores.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from atp_latent.data.records import bare_step

if TYPE_CHECKING:
    from atp_latent.modeling.reasoner import LatentReasoner

_STEP = re.compile(r"<<([^<>]*)>>")


def steps_in(text: str) -> list[str]:
    """The bare steps written in `text` (`<<16-3=13>>\\n<<13*2=26>>` -> ["16-3=13", "13*2=26"]), in order."""
    return [bare_step(s) for s in _STEP.findall(text) if s.strip()]


def has_plan(reasoner) -> bool:
    """Whether the method's rollouts have a readable plan (its text chain, or a step decoder over its latents)."""
    return reasoner.spec.method_def.chain == "text" or bool(reasoner.spec.use_decoder)


def read_plans(reasoner, state, texts: list[str], tok, max_tokens: int = 24) -> list[list[str] | None]:
    """Per row of a batch the engine answered (its LatentState and decoded outputs `texts`): the plan, or None."""
    if reasoner.spec.method_def.chain == "text":
        return [steps_in(t) for t in texts]
    if not reasoner.spec.use_decoder:
        return [None] * len(texts)
    return [steps_in("".join(groups)) for groups in decode_plans(reasoner, state, tok, max_tokens)]


@torch.no_grad()
def decode_plans(model: LatentReasoner, state, tok, max_tokens: int,
                 text_embed: torch.nn.Module | None = None, keep: torch.Tensor | None = None) -> list[list[str]]:
    """Decoded text of every active latent group of every trajectory, in one batched cached decode (all groups of
    all trajectories together; a group stops costing once it has written eos, see LatentReasoner.decode_groups;
    groups with identical latents are decoded once).
    `keep` ([n] bool): decode only these trajectories' groups; the others get no plan ([])."""
    c = model.spec.latents_per_step
    n, L = state.active.shape
    starts = state.active[:, ::c] if L else state.active
    if keep is not None:
        starts = starts & keep.to(starts.device)[:, None]
    rows, groups = starts.nonzero(as_tuple=True)
    plans: list[list[str]] = [[] for _ in range(n)]
    if rows.numel() == 0:
        return plans
    zg = model.decoder_inputs(state.z, rows, groups)
    # Greedy decoding is a function of the group's latents: a group whose latents equal another's, bit for bit,
    # reads the same (the G rollouts of a question share theirs under rl.latent_policy=mean), so decode each once.
    # Compared as bits (an integer view: exact, and torch.unique takes integers on every device and dtype).
    flat = zg.flatten(1).contiguous()
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
    unique, inverse = torch.unique(flat.view(bits), dim=0, return_inverse=True)
    if unique.shape[0] < zg.shape[0]:
        decoded = model.decode_groups(unique.view(flat.dtype).view(-1, *zg.shape[1:]), tok.eos_token_id, tok.pad_token_id,
                                      max_tokens, text_embed=text_embed)[inverse]
    else:
        decoded = model.decode_groups(zg, tok.eos_token_id, tok.pad_token_id, max_tokens, text_embed=text_embed)
    for i, row in zip(rows.tolist(), decoded.tolist()):
        cut = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        plans[i].append(tok.decode(row[:cut]))
    return plans
