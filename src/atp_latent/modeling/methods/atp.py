"""ATP-Latent SFT: a VAE latent head (z ~ N(mu, sigma), + beta KL), a stop head that ends the reasoning, and
SIM-CoT's step decoder. GRPO on its checkpoints is the `atp-rl` pseudo-method (training/rl.py)."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="atp", label="ATP-Latent (SFT)", chain="curriculum", latent=True, long_answers=False,
                   spec_defaults={"use_vae": True, "use_stop_head": True, "use_decoder": True},
                   starts_from="cot", rl_name="atp-rl", rl_label="ATP-Latent (RL)")
