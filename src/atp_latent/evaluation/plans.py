"""A rollout's plan: the steps a method's reasoning reads as, for the diversity metrics (evaluation/diversity.py).

    CoT-SFT (chain "text")           the steps it wrote: each `<<...>>` of its output, in order
    a method with a step decoder     each latent group decoded to text (ATP, SIM-CoT), the groups' steps in order
    any other method                 None: its latents have no readable plan

The decoder reads the groups greedily, as `explain` and RL's coherence reward do (batched, KV-cached).
"""

from __future__ import annotations

import re

from atp_latent.data.records import bare_step

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
    from atp_latent.training.rl import decode_plans

    return [steps_in("".join(groups)) for groups in decode_plans(reasoner, state, tok, max_tokens)]
