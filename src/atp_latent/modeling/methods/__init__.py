"""The method registry: every method's MethodDef, by name. Adding a method = its module + one entry below.

    get_method("simcot").latent        # True
    is_rl("atp-rl")                    # GRPO, not SFT: training/rl.py
"""

from __future__ import annotations

from atp_latent.modeling.methods import atp, coconut, codi, colar, cot, icot, nocot, simcot
from atp_latent.modeling.methods.definition import MethodDef

METHODS: dict[str, MethodDef] = {m.name: m for m in (cot.METHOD, nocot.METHOD, icot.METHOD, coconut.METHOD,
                                                     simcot.METHOD, atp.METHOD, codi.METHOD, colar.METHOD)}
# RL pseudo-methods (`method.name: atp-rl`) -> the method whose checkpoint they continue
RL_METHODS: dict[str, str] = {m.rl_name: m.name for m in METHODS.values() if m.rl_name}
# Every value `method.name` may take in a config
CONFIG_NAMES: tuple[str, ...] = (*METHODS, *RL_METHODS)


def get_method(name: str) -> MethodDef:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


def is_rl(name: str) -> bool:
    """Whether a config's `method.name` asks for GRPO (training/rl.py) rather than SFT."""
    return name in RL_METHODS


__all__ = ["CONFIG_NAMES", "METHODS", "RL_METHODS", "MethodDef", "get_method", "is_rl"]
