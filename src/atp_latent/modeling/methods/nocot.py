"""No-CoT: the answer straight after the question; no steps, no latents."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="nocot", label="No-CoT", chain="none", latent=False, long_answers=False)
