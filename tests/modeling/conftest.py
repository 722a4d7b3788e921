"""Fixtures shared by the modeling tests."""

import pytest
import torch

from atp_latent.data.sequences import left_pad


@torch.no_grad()
def _aim_end_latent(model, b, questions, logit, slots=8):
    """Point the LM head's <|end-latent|> row at the mean last state the latent loop visits over `slots` passes on
    `questions`, scaled so that the <|end-latent|> logit there is about `logit`: a positive logit makes a CoLaR
    rollout stop at various slots, a large negative one makes it use every slot."""
    seen = []
    hook = model.lm.base_model.register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state[:, -1]))
    ids, mask = left_pad([b.eval_prompt(q)[0] for q in questions], b.tok.pad_token_id)
    model.spec.lm_head_stop = False
    try:
        model.fill(ids, mask, torch.full((len(questions),), slots))
    finally:
        model.spec.lm_head_stop = True
        hook.remove()
    u = torch.cat(seen).mean(0)
    model.lm.get_output_embeddings().weight[b.end_id] = logit * u / u.dot(u)


@pytest.fixture(scope="session")
def aim_end_latent():
    """`aim_end_latent(model, builder, questions, logit, slots=8)`: set where a CoLaR model's LM head stops."""
    return _aim_end_latent
