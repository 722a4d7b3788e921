"""LatentReasoner losses on hand-built cases, a micro ATP run, and save/load round trips."""

import math

import pytest
import torch

from atp_latent.data.records import Problem
from atp_latent.data.sequences import Curriculum, SequenceBuilder, builder_for, collate
from atp_latent.evaluation.evaluate import evaluate
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import gaussian_log_density, kl_to_standard_normal
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer

PROBLEMS = [
    Problem(question="Ann has 3 cats and 4 dogs. How many pets?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 bags of 5 pens and loses 1. How many pens?", steps=["2*5=10", "10-1=9"], answer="9"),
    Problem(question="Cy has 6 eggs and eats 2. He buys 3. How many eggs?", steps=["6-2=4", "4+3=7"], answer="7"),
    Problem(question="Di has 8 cards and gives 3. How many cards?", steps=["8-3=5"], answer="5"),
]


@pytest.fixture(scope="module")
def tok():
    corpus = [p.question for p in PROBLEMS] + ["<<1+2=3>>\n### 3"]
    return build_word_tokenizer(corpus)


def make(tok, method="atp", seed=0, **kw):
    torch.manual_seed(seed)
    lm = build_tiny_model("llama-tiny", tok, seed=seed)
    spec = ReasonerSpec.for_method(method, latents_per_step=2, max_latent_stage=2, **kw)
    return LatentReasoner(lm, spec)


def batch_for(tok, model, stage=3):
    cur = Curriculum(latents_per_step=2, max_latent_stage=2)
    b = SequenceBuilder(tok, model.spec.method, cur, mask_surplus=model.spec.use_stop_head)
    return collate([b.build(p, stage) for p in PROBLEMS], tok.pad_token_id)


def test_kl_and_gaussian_density_by_hand():
    mu, logvar = torch.tensor([1.0, 0.0]), torch.tensor([0.0, math.log(4.0)])
    # KL(N(1,1)||N(0,1)) = 0.5; KL(N(0,4)||N(0,1)) = 0.5 * (4 - 1 - ln 4)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), torch.tensor([0.5, 0.5 * (3 - math.log(4.0))]))
    z = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    mu2, logvar2 = torch.tensor([[0.0, 1.0], [1.5, -0.5]]), torch.tensor([[0.2, -0.3], [1.0, 0.0]])
    ref = torch.distributions.Normal(mu2, torch.exp(0.5 * logvar2)).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_log_density(z, mu2, logvar2), ref)


def test_stop_labels_at_group_starts(tok):
    """Stop CE equals a hand computation over group starts with label 1 at surplus groups."""
    model = make(tok).eval()
    batch = batch_for(tok, model)
    out = model(batch)
    state = model.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"], stop_mode="forced",
                       forced_active=batch["active"])
    # Rows with 1 step: group 0 continue, group 1 stop. Rows with 2 steps: both groups continue.
    logits = state.stop_logits[:, [0, 2]]
    labels = torch.tensor([[0, 1], [0, 0], [0, 0], [0, 1]])
    expect = torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1))
    torch.testing.assert_close(out["stop"], expect)


def test_kl_over_active_latents_only(tok):
    model = make(tok).eval()
    batch = batch_for(tok, model)
    out = model(batch)
    state = model.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"], stop_mode="forced",
                       forced_active=batch["active"])
    kl = kl_to_standard_normal(state.mu, state.logvar).mean(-1)
    act = batch["active"]
    torch.testing.assert_close(out["kl"], kl[act].mean())
    assert act.sum() < act.numel()  # the case actually has masked latents


def test_micro_atp_run_lowers_every_loss(tok):
    # beta large enough that the KL term is optimised rather than traded for CE (at 0.001 it grows)
    model = make(tok, beta_kl=10.0).train()
    batch = batch_for(tok, model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first = {k: v.item() for k, v in model(batch).items()}
    for _ in range(40):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    torch.manual_seed(0)
    last = {k: v.item() for k, v in model(batch).items()}
    for term in ("ce", "kl", "decoder", "stop", "loss"):
        assert last[term] < first[term], (term, first[term], last[term])


def test_decoder_gradient_reaches_base_model(tok):
    model = make(tok, method="simcot")
    batch = batch_for(tok, model)
    out = model(batch)
    out["decoder"].backward()
    grad = model.lm.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_shared_decoder_has_no_copy(tok):
    model = make(tok, decoder_mode="shared")
    assert model.decoder is None and model.step_decoder is model.lm
    assert model(batch_for(tok, model))["decoder"] > 0


@pytest.mark.parametrize("method", ["cot", "coconut", "atp"])
def test_checkpoint_reload_gives_identical_eval(tok, tmp_path, method):
    model = make(tok, method=method).eval()
    model.save_pretrained(tmp_path / "ckpt", tok)
    again, tok2 = LatentReasoner.from_pretrained(tmp_path / "ckpt")
    assert again.spec == model.spec
    builder = builder_for(tok2, again.spec)
    s1, rows1 = evaluate(model, builder_for(tok, model.spec), PROBLEMS, max_new_tokens=6, progress=False)
    s2, rows2 = evaluate(again, builder, PROBLEMS, max_new_tokens=6, progress=False)
    assert [r["output"] for r in rows1] == [r["output"] for r in rows2]
    assert s1 == s2
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_from_cot_checkpoint_to_atp_adds_heads(tok, tmp_path):
    make(tok, method="cot").save_pretrained(tmp_path / "cot", tok)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=2)
    atp, _ = LatentReasoner.from_pretrained(tmp_path / "cot", spec=spec)
    assert atp.latent_head is not None and atp.stop_head is not None and atp.decoder is not None
    torch.testing.assert_close(atp.decoder.get_input_embeddings().weight, atp.lm.get_input_embeddings().weight)


# ----- paper-scale defects (regressions) -----

def test_bf16_model_runs_heads_without_autocast(tok):
    """A bf16 LM (model.dtype: bfloat16) gets bf16 heads: training loss, evaluation and a reload all run."""
    model = make(tok)
    model = LatentReasoner(model.lm.to(torch.bfloat16), model.spec)
    assert model.latent_head.mu.weight.dtype == torch.bfloat16 and model.stop_head.mlp[0].weight.dtype == torch.bfloat16
    out = model.train()(batch_for(tok, model))
    assert torch.isfinite(out["loss"]) and out["decoder"] > 0 and out["stop"] > 0
    out["loss"].backward()
    assert model.latent_head.mu.weight.grad is not None
    builder = builder_for(tok, model.spec)
    summary, rows = evaluate(model, builder, PROBLEMS, batch_size=4, max_new_tokens=4, progress=False)
    assert summary.n == len(PROBLEMS) and len(rows) == len(PROBLEMS)


def test_output_head_runs_only_where_a_label_is(tok):
    """The LM head sees exactly the labelled suffix positions, the decoder head exactly the target tokens; the
    losses equal a full-logit computation."""
    import torch.nn.functional as F

    model = make(tok).eval()
    batch = batch_for(tok, model)
    rows = {"lm": [], "dec": []}
    h1 = model.lm.get_output_embeddings().register_forward_hook(lambda m, i, o: rows["lm"].append(i[0].shape))
    h2 = model.decoder.get_output_embeddings().register_forward_hook(lambda m, i, o: rows["dec"].append(i[0].shape))
    out = model(batch)
    h1.remove()
    h2.remove()
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    assert rows["lm"] == [torch.Size([n_labels, 128])]
    assert rows["dec"] == [torch.Size([int(batch["dec_mask"].sum()), 128])]
    # the CE against full logits of the same teacher-forced pass
    state = model.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"], stop_mode="forced",
                       forced_active=batch["active"])
    logits = model.lm_logits(state, batch["suffix_ids"], batch["suffix_mask"])
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out["ce"], ref)


def _varied(model, scale=0.6, seed=5):
    """Larger random weights so greedy outputs differ per row and per step (a default init repeats one token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (model.lm, model.decoder):
            for p in m.parameters():
                if p.dim() == 2:
                    p.add_(torch.randn(p.shape, generator=g) * scale / p.shape[1] ** 0.5)
    return model


def test_step_decoder_decodes_as_it_was_trained(tok):
    """Greedy decode_groups equals the argmax of the teacher-forced decoder (decoder_logits, the SFT loss path)
    on its own output: generated tokens are read through the base model's table, as in training, even when
    the decoder's own table differs from it."""
    model = _varied(make(tok, "simcot")).eval()
    with torch.no_grad():  # after SFT the two tables differ: make them differ a lot
        model.lm.get_input_embeddings().weight.mul_(-1.0)
    zg = torch.randn(6, 2, 128, generator=torch.Generator().manual_seed(0))
    eos, pad = tok.eos_token_id, tok.pad_token_id
    tokens = model.decode_groups(zg, eos, pad, max_new_tokens=8)
    valid = torch.ones_like(tokens, dtype=torch.bool)
    for i, row in enumerate(tokens.tolist()):
        if eos in row:
            valid[i, row.index(eos) + 1:] = False
    with torch.no_grad():
        logits = model.decoder_logits(zg, tokens, valid)
    assert len(set(tokens[valid].tolist())) > 3  # the check is not vacuous: outputs vary
    assert torch.equal(logits.argmax(-1), tokens[valid])
    # a frozen snapshot of the table (what RL passes) is used when given
    snap = torch.nn.Embedding.from_pretrained(model.lm.get_input_embeddings().weight.clone())
    assert torch.equal(model.decode_groups(zg, eos, pad, 8, text_embed=snap), tokens)


def test_logvar_bound_is_soft():
    """logvar stays inside its bounds, is the identity in the working range, and keeps a gradient beyond them."""
    from atp_latent.modeling.heads import LOGVAR_MAX, LOGVAR_MIN, soft_clamp

    x = torch.tensor([-40.0, -14.0, -6.0, -2.0, 0.0, 3.0, 40.0], requires_grad=True)
    y = soft_clamp(x, LOGVAR_MIN, LOGVAR_MAX)
    assert (y >= LOGVAR_MIN).all() and (y <= LOGVAR_MAX).all()
    torch.testing.assert_close(y[2:5], x[2:5].detach(), atol=3e-3, rtol=0)
    y.sum().backward()
    assert (x.grad[1:6] > 1e-3).all()  # a hard clamp gives 0 at -14
