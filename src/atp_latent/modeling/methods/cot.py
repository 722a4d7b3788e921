"""CoT-SFT: the language baseline that writes every step as text before the answer; no latents."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="cot", label="CoT-SFT", chain="text", latent=False, long_answers=True)
