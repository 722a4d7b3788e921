"""The latent head's initialisation knobs (method.latent_head_residual, method.init_logvar)."""

import math

import torch

from atp_latent.data.sequences import left_pad
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import LatentHead
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer


def test_residual_head_starts_at_identity_with_the_given_sigma():
    torch.manual_seed(0)
    head = LatentHead(16, residual=True, init_logvar=math.log(0.01))
    h = torch.randn(5, 16) * 3
    mu, logvar = head(h)
    assert torch.equal(mu, h)
    torch.testing.assert_close(torch.exp(0.5 * logvar), torch.full((5, 16), 0.1), atol=1e-3, rtol=0)
    assert not torch.equal(LatentHead(16)(h)[0], h)  # the reference init is not the identity


def test_residual_atp_fills_the_latents_coconut_fills():
    """At initialisation an ATP reasoner with the residual head (greedy, z = mu) runs exactly Coconut's loop."""
    tok = build_word_tokenizer(["Ann has 3 cats and 4 dogs. How many pets?", "<<3+4=7>>\n### 7"])
    lm = build_tiny_model("llama-tiny", tok, seed=1)
    atp = LatentReasoner(lm, ReasonerSpec.for_method("atp", latents_per_step=1, max_latent_stage=3,
                                                     latent_head_residual=True, use_stop_head=False))
    coconut = LatentReasoner(lm, ReasonerSpec.for_method("coconut", latents_per_step=1, max_latent_stage=3))
    ids, mask = left_pad([tok("Ann has 3 cats.")["input_ids"], tok("Ann has 3 cats and 4 dogs.")["input_ids"]],
                         tok.pad_token_id)
    n = torch.tensor([3, 3])
    with torch.no_grad():
        a, c = atp.eval().fill(ids, mask, n), coconut.eval().fill(ids, mask, n)
    assert a.z.shape == (2, 3, 128)
    torch.testing.assert_close(a.z, c.z)
    torch.testing.assert_close(a.last_hidden, c.last_hidden)
