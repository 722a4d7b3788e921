"""CODI (Shen et al. 2025, self-distillation): one LM is both teacher and student. The teacher task is explicit CoT
(question + CoT without its last step + answer, CE on CoT and answer); the student fills a fixed number of latents,
each the last hidden state through a projector (Linear, GELU, Linear, LayerNorm), then writes the answer (CE). The
student's hidden states of every layer at the token before the answer are pulled to the teacher's (detached) there:
loss = CE + distill_weight x distillation + teacher_weight x teacher CE. Latents: fixed from step 0 through the
curriculum knobs (c = 2, max_latent_stage 3, stage_offset 4: every step latent, 6 slots, configs/*/codi.yaml).
Reasoning ends after those max_latent_stage x c latents, then <|end-latent|> and the answer. Upstream starts from a
pretrained base model (the teacher trains jointly); the suites' tiny models have none, so there it starts from the
CoT-SFT checkpoint, as every latent method does (equal steps after the same start; docs/deviations.md row 21)."""

from atp_latent.modeling.methods.definition import MethodDef

METHOD = MethodDef(name="codi", label="CODI", chain="curriculum", latent=True, long_answers=False,
                   spec_defaults={"use_projector": True, "use_teacher": True}, starts_from="cot")
