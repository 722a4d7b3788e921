"""LatentReasoner losses on hand-built cases, a micro ATP run, and save/load round trips."""

import math

import pytest
import torch

from atp_latent.data.records import Problem
from atp_latent.data.sequences import Curriculum, SequenceBuilder, builder_for, collate, left_pad
from atp_latent.evaluation.evaluate import evaluate
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import gaussian_log_density, kl_to_standard_normal
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer, latent_token_ids

PROBLEMS = [
    Problem(question="Ann has 3 cats and 4 dogs. How many pets?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 bags of 5 pens and loses 1. How many pens?", steps=["2*5=10", "10-1=9"], answer="9"),
    Problem(question="Cy has 6 eggs and eats 2. He buys 3. How many eggs?", steps=["6-2=4", "4+3=7"], answer="7"),
    Problem(question="Di has 8 cards and gives 3. How many cards?", steps=["8-3=5"], answer="5"),
]


@pytest.fixture(scope="module")
def tok():
    corpus = [p.question for p in HAND] + ["<<1+2=3>>\n### 3"]
    return build_word_tokenizer(corpus)


def make(tok, method="atp", seed=0, preset="llama-tiny", **kw):
    torch.manual_seed(seed)
    lm = build_tiny_model(preset, tok, seed=seed)
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
    sigma = torch.exp(0.5 * state.logvar).mean(-1)
    torch.testing.assert_close(out["sigma"], sigma[act].mean())
    assert not out["sigma"].requires_grad  # logged only, never part of the loss


def test_sigma_starts_at_the_initial_logvar(tok):
    """With init_logvar = -5 every latent's std is exp(-2.5) before any update; a method without the VAE head
    has no sigma to log."""
    model = make(tok, latent_head_residual=True, init_logvar=-5.0).eval()
    out = model(batch_for(tok, model))
    # the soft clamp moves logvar = -5 by about exp(-(-5 - LOGVAR_MIN)) = exp(-7), i.e. sigma by 0.05%
    assert out["sigma"].item() == pytest.approx(math.exp(0.5 * (-5 + math.exp(-7))), rel=1e-5)
    assert "sigma" not in make(tok, use_vae=False).eval()(batch_for(tok, model))


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
    model = _varied(make(tok, method=method), scale=1.5).eval()
    model.save_pretrained(tmp_path / "ckpt", tok)
    again, tok2 = LatentReasoner.from_pretrained(tmp_path / "ckpt")
    assert again.spec == model.spec
    builder = builder_for(tok2, again.spec)
    s1, rows1 = evaluate(model, builder_for(tok, model.spec), PROBLEMS, max_new_tokens=6, progress=False)
    s2, rows2 = evaluate(again, builder, PROBLEMS, max_new_tokens=6, progress=False)
    assert [r["output"] for r in rows1] == [r["output"] for r in rows2]
    assert len({r["output"] for r in rows1}) > 1  # outputs differ per row: the comparison can fail
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
            for p in (m.parameters() if m is not None else ()):
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


# ----- every loss term and every log-prob stream by hand, on rows of different lengths -----

HAND = PROBLEMS + [Problem(question="Eve has 4 boxes of 3 pens, adds 2 and gives 5. How many pens?",
                           steps=["4*3=12", "12+2=14", "14-5=9"], answer="9")]
# Per row (c = 2, max_latent_stage = 2): stage -> slots, active slots, decoder targets (one step per group; the last
# of 2 groups takes every remaining step when all are latent; a surplus group is eos-only).
HAND_STAGES = [2, 1, 3, 1, 3]
HAND_SLOTS = [4, 2, 4, 2, 4]
HAND_ACTIVE = [2, 2, 4, 2, 4]
HAND_TARGETS = [["<<3+4=7>>", None], ["<<2*5=10>>"], ["<<6-2=4>>", "<<4+3=7>>"], ["<<8-3=5>>"],
                ["<<4*3=12>>", "<<12+2=14>>\n<<14-5=9>>"]]


def hand_batch(tok, model):
    cur = Curriculum(latents_per_step=2, max_latent_stage=2)
    b = SequenceBuilder(tok, model.spec.method, cur, mask_surplus=model.spec.use_stop_head)
    batch = collate([b.build(p, s) for p, s in zip(HAND, HAND_STAGES)], tok.pad_token_id)
    assert batch["n_slots"].tolist() == HAND_SLOTS and batch["active"].sum(-1).tolist() == HAND_ACTIVE
    return batch


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def _unpadded(batch, i, key="prefix"):
    ids, mask = batch[f"{key}_ids"][i], batch[f"{key}_mask"][i].bool()
    return ids[mask]


@pytest.mark.parametrize("positions", ["group_start", "all"])
def test_sft_losses_by_hand(tok, positions):
    """CE, KL, decoder and stop losses of a training-mode forward (sampled latents) recomputed by hand: a full pass
    per row over [question, active latents, suffix]; each decoder pair through a full decoder call on
    [its c latents, its step's text read through the base table] with the targets written from the problem's steps;
    the decoder loss the mean over groups of (summed token CE / pairs in the group); the stop CE with label 1 at
    surplus slots, at group starts (mean) or at every slot below n_slots (sum / (groups * rows))."""
    F = torch.nn.functional
    model = _varied(make(tok, preset="gpt2-tiny", stop_loss_positions=positions, beta_kl=0.37, decoder_weight=0.6),
                    scale=1.0).train()
    batch = hand_batch(tok, model)
    torch.manual_seed(11)
    out = model(batch)
    torch.manual_seed(11)  # the same draws: the latents the forward trained on
    with torch.no_grad():
        st = model.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"], stop_mode="forced",
                        forced_active=batch["active"], sample_latents=True)
    z, eos, c = st.z.detach(), tok.eos_token_id, 2
    assert not torch.allclose(z, st.mu)  # training samples its latents
    lm_table, dec = model.lm.get_input_embeddings(), model.decoder
    with torch.no_grad():
        # CE over every labelled suffix token of the batch
        ce_sum, n_lab = 0.0, 0
        for i, p in enumerate(HAND):
            pre, suf = _unpadded(batch, i), _unpadded(batch, i, "suffix")
            emb = torch.cat([lm_table(pre), z[i, : HAND_ACTIVE[i]], lm_table(suf)])
            logits = model.lm(inputs_embeds=emb[None]).logits[0, -len(suf):]
            removed = min(HAND_STAGES[i], len(p.steps))
            rest = "".join(f"<<{s}>>\n" for s in p.steps[removed:]) + "### " + p.answer
            target = torch.tensor(_ids(tok, rest) + [eos])
            assert suf[1:].tolist() == target.tolist()
            ce_sum += F.cross_entropy(logits[:-1].float(), target, reduction="sum")
            n_lab += len(target)
        # KL over active latents, mean over dimensions
        kl = [(0.5 * (st.mu[i, t] ** 2 + st.logvar[i, t].exp() - 1 - st.logvar[i, t])).mean()
              for i in range(len(HAND)) for t in range(HAND_ACTIVE[i])]
        # decoder: per group, mean over its pairs of the summed CE; then mean over groups
        per_group: dict[int, list] = {}
        for i, targets in enumerate(HAND_TARGETS):
            for g, text in enumerate(targets):
                ids = torch.tensor(_ids(tok, text) + [eos])
                emb = torch.cat([z[i, g * c: g * c + c], lm_table(ids[:-1])])
                logits = dec(inputs_embeds=emb[None]).logits[0, c - 1:]
                per_group.setdefault(g, []).append(F.cross_entropy(logits.float(), ids, reduction="sum"))
        dec_loss = sum(sum(v) / len(v) for v in per_group.values()) / len(per_group)
        # stop
        stop_ce = []
        for i in range(len(HAND)):
            for t in range(HAND_SLOTS[i]):
                if positions == "group_start" and t % c:
                    continue
                label = torch.tensor([int(t >= HAND_ACTIVE[i])])
                stop_ce.append(F.cross_entropy(model.stop_head(z[i, t])[None].float(), label))
        if positions == "group_start":
            stop = sum(stop_ce) / len(stop_ce)
        else:
            stop = sum(stop_ce) / (len(HAND) * (max(HAND_SLOTS) // c))
    torch.testing.assert_close(out["ce"], ce_sum / n_lab, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["kl"], sum(kl) / len(kl), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["decoder"], dec_loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["stop"], stop, atol=1e-5, rtol=1e-5)
    # the global mean over pairs differs from the per-group normalisation: the case tells them apart
    pairs = [x for v in per_group.values() for x in v]
    assert abs(float(sum(pairs) / len(pairs) - dec_loss)) > 1e-2
    torch.testing.assert_close(out["loss"], out["ce"] + 0.37 * out["kl"] + 0.6 * out["decoder"] + out["stop"])
    assert out["active_latents"].item() == pytest.approx(sum(HAND_ACTIVE) / len(HAND))


def test_eval_mode_forward_uses_mu(tok):
    """Teacher forcing in eval mode is deterministic (z = mu); training mode draws a new sample each call."""
    model = make(tok)
    batch = hand_batch(tok, model)
    model.eval()
    a, b = model(batch), model(batch)
    assert a["ce"].item() == b["ce"].item() and a["decoder"].item() == b["decoder"].item()
    model.train()
    c, d = model(batch), model(batch)
    assert c["ce"].item() != d["ce"].item() and c["decoder"].item() != d["decoder"].item()


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_score_streams_by_hand(tok, preset):
    """`score` on a hand-made trajectory: latent = Gaussian log-density of z_t (sum over dimensions) + log p(continue)
    at group starts that continued, 0 at masked slots; stop = log p(stop) at the slot that stopped; answer = token
    log-probs at the temperature, all from one full pass per row over [question, active latents, end, tokens]."""
    model = _varied(make(tok, preset=preset), scale=1.0).eval()
    eos, (start, _, end) = tok.eos_token_id, latent_token_ids(tok)
    prefixes = [[tok.bos_token_id] + _ids(tok, p.question + "\n") + [start] for p in PROBLEMS[:3]]
    ids, mask = left_pad(prefixes, tok.pad_token_id)
    active = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    consulted = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    stopped = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    z = torch.randn(3, 4, 128, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[9, 10, 11, eos], [12, eos, 0, 0], [13, 14, 15, 16]])
    tmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    T = 0.7
    batch = {"prefix_ids": ids, "prefix_mask": mask, "n_slots": torch.tensor([4, 4, 4]), "rl_z": z,
             "rl_active": active, "rl_consulted": consulted, "rl_stopped": stopped, "rl_tokens": tokens,
             "rl_token_mask": tmask, "end_id": torch.tensor(end), "rl_temperature": torch.tensor(T)}
    with torch.no_grad():
        got = model.score(batch)
        table = model.lm.get_input_embeddings()
        for i, pre in enumerate(prefixes):
            n_act, toks = int(active[i].sum()), tokens[i][tmask[i]]
            emb = torch.cat([table(torch.tensor(pre)), z[i, :n_act], table(torch.tensor([end])), table(toks[:-1])])
            hid = model.lm.base_model(inputs_embeds=emb[None]).last_hidden_state[0]
            P = len(pre)
            latent = torch.zeros(4)
            for t in range(n_act):
                mu, logvar = model.latent_head(hid[P - 1 + t])
                normal = torch.distributions.Normal(mu.float(), torch.exp(0.5 * logvar.float()))
                latent[t] = normal.log_prob(z[i, t]).sum()
                if t % 2 == 0:
                    latent[t] += torch.log_softmax(model.stop_head(z[i, t]).float(), -1)[0]
            stop = torch.log_softmax(model.stop_head(z[i, n_act]).float(), -1)[1] if stopped[i].any() else 0.0
            logits = model.lm.get_output_embeddings()(hid[P + n_act:]).float() / T
            answer = torch.log_softmax(logits, -1).gather(-1, toks[:, None])[:, 0]
            torch.testing.assert_close(got["latent"][i], latent, atol=2e-3, rtol=1e-4)
            torch.testing.assert_close(got["stop"][i], torch.as_tensor(stop, dtype=torch.float32), atol=1e-5,
                                       rtol=1e-5)
            torch.testing.assert_close(got["answer"][i][tmask[i]], answer, atol=1e-4, rtol=1e-4)
            assert (got["answer"][i][~tmask[i]] == 0).all()
    assert got["stop"][0] == 0 and got["stop"][1] < 0 and got["stop"][2] < 0


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_decode_groups_equals_slow_greedy_decode(tok, preset):
    """Batched cached decode_groups equals a one-group-at-a-time greedy decode that recomputes the decoder over
    [latents, text so far] at each token (generated tokens read through the base model's table); pad after eos."""
    model = _varied(make(tok, "simcot", preset=preset), scale=1.5).eval()
    with torch.no_grad():
        model.lm.get_input_embeddings().weight.mul_(-1.0)  # the base table differs from the decoder's own
    zg = torch.randn(6, 2, 128, generator=torch.Generator().manual_seed(1))
    pad, n_new = tok.pad_token_id, 7
    table, dec = model.lm.get_input_embeddings(), model.decoder
    with torch.no_grad():
        def slow(g, eos):
            out = []
            for _ in range(n_new):
                emb = torch.cat([zg[g], table(torch.tensor(out, dtype=torch.long))])
                nxt = int(dec(inputs_embeds=emb[None]).logits[0, -1].argmax())
                out.append(nxt)
                if nxt == eos:
                    break
            return out

        free = [slow(g, -1) for g in range(len(zg))]
        # "eos" tokens that end some groups at different steps and not others: one first emitted at step >= 1,
        # one that a group emits first (that group's text is eos only)
        late = next(x for seq in free for k, x in enumerate(seq[1:], 1) if x not in seq[:k]
                    and any(x not in other for other in free))
        first = free[0][0]
        assert any(seq[0] != first for seq in free)
        for eos in (late, first):
            got = model.decode_groups(zg, eos, pad, max_new_tokens=n_new)
            ref = [slow(g, eos) for g in range(len(zg))]
            for g, seq in enumerate(ref):
                assert got[g, : len(seq)].tolist() == seq
                assert (got[g, len(seq):] == pad).all()
            assert len({tuple(s) for s in ref}) > 3 and len({len(s) for s in ref}) > 1


def test_heads_compute_the_method_architecture_by_hand():
    """METHOD.md §4-§5: latent head = Linear -> GELU -> Linear -> LayerNorm, then Linear for mu and Linear for logvar
    (soft-bounded); stop head = Linear -> GELU -> Linear(d, 2) applied to z. Written out with the heads' weights."""
    import torch.nn.functional as F

    from atp_latent.modeling.heads import LOGVAR_MAX, LOGVAR_MIN, LatentHead, StopHead, soft_clamp

    torch.manual_seed(0)
    lh, sh, d = LatentHead(16), StopHead(16), 16
    h = torch.randn(5, d) * 2
    t = lh.trunk
    x = F.layer_norm(F.linear(F.gelu(F.linear(h, t[0].weight, t[0].bias)), t[2].weight, t[2].bias), (d,),
                     t[3].weight, t[3].bias, t[3].eps)
    mu, logvar = lh(h)
    torch.testing.assert_close(mu, F.linear(x, lh.mu.weight, lh.mu.bias))
    torch.testing.assert_close(logvar, soft_clamp(F.linear(x, lh.logvar.weight, lh.logvar.bias), LOGVAR_MIN, LOGVAR_MAX))
    m = sh.mlp
    torch.testing.assert_close(sh(h), F.linear(F.gelu(F.linear(h, m[0].weight, m[0].bias)), m[2].weight, m[2].bias))
    assert sh(h).shape == (5, 2)


@pytest.mark.parametrize("use_vae", [True, False])
def test_detached_stop_head_trains_the_head_only(tok, use_vae):
    """`stop_head_detached` (an ablation): the stop loss's gradient reaches the stop head exactly as before and
    nothing upstream of z (the latent head, the LM); attached, it reaches the LM too."""
    grads = {}
    for detached in (False, True):
        model = make(tok, use_vae=use_vae, use_decoder=False, stop_head_detached=detached).train()
        batch = batch_for(tok, model)
        torch.manual_seed(3)
        model(batch)["stop"].backward()
        grads[detached] = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                           for n, p in model.named_parameters()}
    attached, detached = grads[False], grads[True]
    head = [n for n in attached if n.startswith("stop_head.")]
    upstream = [n for n in attached if not n.startswith("stop_head.")]
    assert head and upstream
    for n in head:  # same init, same latents: the head's own gradient is unchanged
        assert attached[n].abs().sum() > 0
        torch.testing.assert_close(detached[n], attached[n])
    assert all(detached[n].abs().sum() == 0 for n in upstream)
    assert sum(attached[n].abs().sum() for n in upstream if n.startswith("lm.")) > 0
