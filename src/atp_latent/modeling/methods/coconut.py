"""Coconut: steps become latent slots stage by stage; each latent is the last hidden state, fed back."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="coconut", label="Coconut", chain="curriculum", latent=True, long_answers=False,
                   starts_from="cot")
