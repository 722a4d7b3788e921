"""MethodDef: what makes a method itself, declared once in its own module (see docs/methods.md).

Plain data, no torch: the config loader reads the registry to validate `method.name`. Everything the
shared code used to decide by comparing method names (latent slots, answer budget, sequence layout,
architecture defaults, display label, where a run starts) is a field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What a training sequence keeps of the reasoning chain (data/sequences.py, SequenceBuilder.build):
#   text        every step as text (CoT-SFT)
#   none        no step at all (No-CoT)
#   curriculum  the first `stage` steps replaced by latent groups (Coconut's schedule)
#   internalize the first `stage` tokens of the written chain dropped, no latents (iCoT's schedule)
#   compressed  every step latent: the chain's tokens pooled c at a time into latent slots, c drawn per batch and
#               written in the prompt (CoLaR's layout; the "stage" is c)
Chain = Literal["text", "none", "curriculum", "internalize", "compressed"]
LATENT_CHAINS = ("curriculum", "compressed")


@dataclass(frozen=True)
class MethodDef:
    name: str  # `method.name` in configs and `method` in reasoner.json
    label: str  # how tables and plots name it
    chain: Chain
    latent: bool  # fills latent slots (evaluation gets max_latent_stage * latents_per_step of them)
    long_answers: bool  # the answer also writes the steps: eval.cot_max_new_tokens, not eval.max_new_tokens
    spec_defaults: dict[str, object] = field(default_factory=dict)  # ReasonerSpec fields it turns on
    starts_from: str | None = None  # the suite job whose best checkpoint it is trained from (None: scratch)
    rl_name: str | None = None  # the `method.name` of GRPO on a checkpoint of this method (e.g. atp-rl)
    rl_label: str | None = None  # how tables name that RL (its bench job is rl_name with "_" for "-": atp_rl)

    def __post_init__(self):
        if (self.chain in LATENT_CHAINS) != self.latent:
            raise ValueError(f"method {self.name!r}: chains {LATENT_CHAINS} go with latent=True, and only they do")
