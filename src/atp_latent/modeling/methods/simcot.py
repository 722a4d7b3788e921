"""SIM-CoT: Coconut plus a step decoder that reads each latent group back into its step's text (CE + decoder)."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="simcot", label="SIM-CoT", chain="curriculum", latent=True, long_answers=False,
                   spec_defaults={"use_decoder": True}, starts_from="cot")
