"""iCoT (stepwise internalization, Deng et al. 2024): CoT-SFT whose written chain loses tokens from its front on a
schedule (data/internalize.py) until only the answer is left; no latents. Starts from CoT-SFT, as the paper does."""

from atp_latent.modeling.methods.definition import MethodDef

# long_answers: until the whole chain is gone the model still writes what is left of it
METHOD = MethodDef(name="icot", label="iCoT", chain="internalize", latent=False, long_answers=True,
                   starts_from="cot")
