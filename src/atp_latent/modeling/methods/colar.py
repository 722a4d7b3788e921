"""CoLaR (Tan et al. 2025, compressed latent reasoning). SFT is one teacher-forced pass: the CoT chain's tokens are
pooled c at a time (sum / sqrt(n), c drawn per batch from 1..max_compression and written in the prompt) into the
latent slots; CE on one randomly drawn token of each next group (the last group's label is <|end-latent|>: the LM
head learns to stop) and on the answer; the Gaussian latent head predicts the next group's embedding / emb_std (MSE
on a sample, or NLL). At inference each latent is emb_std x a draw of the head (its mean when greedy), fed back, and
reasoning ends when the LM head emits <|end-latent|> (no stop head). Losses: modeling/compressed.py. GRPO on its
checkpoints is `colar-rl`: the stop is scored as the first answer token and continue decisions are not scored
(training/rl.py reads both from `lm_head_stop`). Starts from CoT-SFT, as upstream does."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="colar", label="CoLaR", chain="compressed", latent=True, long_answers=False,
                   spec_defaults={"use_vae": True, "lm_head_stop": True}, starts_from="cot", rl_name="colar-rl",
                   rl_label="CoLaR-RL")
