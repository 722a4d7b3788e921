"""The latent engine against slow full-recompute paths, on models whose outputs vary per row and per step.

A default tiny init emits one token at every step for every row, so token-for-token checks on it cannot fail;
`varied_lm` scales the weights up until greedy outputs differ per row and per step (each test asserts that).
"""

import pytest
import torch

from atp_latent.modeling.engine import fill_latents, generate, teacher_force
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import LatentHead, StopHead
from atp_latent.modeling.reference import reference_row
from atp_latent.modeling.tokenizer import build_word_tokenizer, latent_token_ids

CORPUS = ["Tom has 3 apples and 4 pears.", "How many fruits does he have?", "<<3+4=7>>\n### 7",
          "Sue buys 12 red pens, loses 5 and finds 2 blue ones.", "What is left in the box after that?"]
C = 2  # latents per group


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(CORPUS)


def varied_lm(preset, tok, seed=0, scale=1.5):
    """A tiny LM with larger random weights and an output head of its own (a tied head favours repeating the last
    token), so that greedy outputs differ per row and per step; a mix-up of the input and output tables shows."""
    lm = build_tiny_model(preset, tok, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * scale / p.shape[1] ** 0.5)
        table = lm.get_input_embeddings().weight
        lm.get_output_embeddings().weight = torch.nn.Parameter(torch.randn(table.shape, generator=g) * 0.3)
    lm.config.tie_word_embeddings = False
    return lm


def _rows(tok):
    s, _, _ = latent_token_ids(tok)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [
        [tok.bos_token_id, *enc("Tom has 3 apples."), s],
        [tok.bos_token_id, *enc("How many?"), s],
        [tok.bos_token_id, *enc("Tom has 3 apples and 4 pears. How many fruits?"), s],
        [tok.bos_token_id, *enc("Sue buys 12 red pens, loses 5."), s],
    ]


SLOTS = [4, 2, 6, 6]


def _batch(rows, pad):
    P = max(map(len, rows))
    ids = torch.tensor([[pad] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _heads(kind, d, seed=1):
    torch.manual_seed(seed)
    if kind == "coconut":
        return None, None
    lh = LatentHead(d).eval()
    if kind == "vae":
        return lh, None
    return lh, StopHead(d).eval()


def _stop_spread(lm, lh, sh, ids, mask, slots):
    """Set the stop head's bias so that rows stop at as many different group starts as possible (z does not depend
    on the stop head, so each threshold's outcome is known from one unstopped pass)."""
    with torch.no_grad():
        free = fill_latents(lm, ids, mask, slots, latent_head=lh, c=C)
        logits = sh(free.z)
        diff = logits[..., 1] - logits[..., 0]  # [B, L]
    starts = [[t for t in range(0, int(s), C)] for s in slots]
    vals = sorted({float(diff[i, t]) for i, ts in enumerate(starts) for t in ts})
    cands = [(a + b) / 2 for a, b in zip(vals, vals[1:])]  # midway: no row sits on the threshold

    def used(theta):
        return [next((t for t in ts if diff[i, t] > theta), int(slots[i])) for i, ts in enumerate(starts)]

    best = max(cands, key=lambda th: len(set(used(th))))
    with torch.no_grad():
        sh.mlp[2].bias[1] -= best  # p(stop) > p(continue) exactly where diff > best
    return used(best)


class Capture:
    """Records what a module returns (the LM head's logits at each generated step)."""

    def __init__(self, module):
        self.out = []
        self.handle = module.register_forward_hook(lambda m, i, o: self.out.append(o.detach().clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _pick_eos(tokens):
    """A token some row emits first at step >= 1 while another row never emits it: used as eos, it ends rows at
    different steps."""
    seqs = tokens.tolist()
    for seq in seqs:
        for k in range(1, len(seq)):
            x = seq[k]
            if x in seq[:k]:
                continue
            if any(x not in other for other in seqs):
                return x
    pytest.fail("outputs too uniform to pick an eos that ends rows at different steps")


def _greedy_case(tok, preset, kind, n_new=6):
    lm = varied_lm(preset, tok)
    lh, sh = _heads(kind, lm.config.hidden_size)
    rows = _rows(tok)
    ids, mask = _batch(rows, tok.pad_token_id)
    slots = torch.tensor(SLOTS)
    if sh is not None:
        _stop_spread(lm, lh, sh, ids, mask, slots)
    _, _, end = latent_token_ids(tok)
    first = torch.full((len(rows), 1), end)
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=C)
        probe = generate(lm, st, first, n_new, eos_id=-1, pad_id=tok.pad_token_id)
    return lm, lh, sh, rows, ids, mask, slots, end, _pick_eos(probe.tokens)


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("kind", ["coconut", "vae", "vae+stop"])
def test_engine_matches_full_recompute(tok, preset, kind):
    """Latents, hidden states, stop decisions, every step's logits, tokens, log-probs, masks and lengths of the
    batched cached engine equal a row-by-row full recompute (modeling/reference.py)."""
    n_new = 6
    lm, lh, sh, rows, ids, mask, slots, end, eos = _greedy_case(tok, preset, kind, n_new)
    pad = tok.pad_token_id
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=C)
        with Capture(lm.get_output_embeddings()) as cap:
            gen = generate(lm, st, torch.full((len(rows), 1), end), n_new, eos, pad)
    step_logits = torch.stack(cap.out, 1)  # [B, steps, V]
    assert gen.n_passes == step_logits.shape[1]
    seqs = []
    for i, r in enumerate(rows):
        ref = reference_row(lm, r, int(slots[i]), end, eos, n_new, latent_head=lh, stop_head=sh, c=C)
        n_act = len(ref["z"])
        assert st.active[i].tolist() == [t < n_act for t in range(st.active.shape[1])], i
        if n_act:
            torch.testing.assert_close(st.z[i, :n_act], torch.stack(ref["z"]), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(st.last_hidden[i], ref["latent_hidden"][-1], atol=1e-4, rtol=1e-4)
            if lh is None:  # Coconut: each latent is the hidden state of the position before it
                torch.testing.assert_close(st.z[i, 1:n_act], torch.stack(ref["latent_hidden"][:-1]), atol=1e-4,
                                           rtol=1e-4)
        if sh is not None:
            stopped = n_act < int(slots[i])
            assert st.stopped[i].tolist() == [stopped and t == n_act for t in range(st.stopped.shape[1])], i
            assert st.consulted[i].tolist() == [t % C == 0 and t <= n_act and t < int(slots[i])
                                                for t in range(st.consulted.shape[1])], i
        n = len(ref["tokens"])
        ended = ref["tokens"][-1] == eos
        assert gen.tokens[i, :n].tolist() == ref["tokens"]
        assert (gen.tokens[i, n:] == pad).all()
        assert gen.mask[i].tolist() == [k < n for k in range(gen.mask.shape[1])]
        assert int(gen.lengths[i]) == n - int(ended)
        torch.testing.assert_close(step_logits[i, :n], torch.stack(ref["logits"]), atol=1e-3, rtol=1e-3)
        lp = torch.log_softmax(torch.stack(ref["logits"]).float(), -1).gather(-1, torch.tensor(ref["tokens"])[:, None])
        torch.testing.assert_close(gen.logprobs[i, :n], lp[:, 0], atol=1e-3, rtol=1e-3)
        assert (gen.logprobs[i, n:] == 0).all()
        seqs.append(ref["tokens"])
    # the comparison is not vacuous: outputs differ per row and per step, and rows end at different steps
    assert len({tuple(s) for s in seqs}) == len(seqs)
    assert sum(len(set(s)) > 2 for s in seqs) >= len(seqs) // 2 and len({x for s in seqs for x in s}) > 6
    assert len(set(gen.lengths.tolist())) > 1
    if sh is not None:
        assert len(set(st.active.sum(-1).tolist())) > 2, "rows should stop at different slots"


def test_engine_attention_mask_and_positions(tok):
    """The cached columns' attention mask: the prefix mask, then 1 exactly at active latent slots, then 1 for every
    generated column; each row's next position counts its own attended columns."""
    lm, lh, sh, rows, ids, mask, slots, end, eos = _greedy_case(tok, "llama-tiny", "vae+stop")
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=C)
        ran = st.attention_mask.shape[1] - ids.shape[1]
        assert ran == st.n_passes - 1 == st.z.shape[1]
        torch.testing.assert_close(st.attention_mask, torch.cat([mask, st.active.long()], 1))
        assert st.next_position.tolist() == (mask.sum(-1) + st.active.sum(-1)).tolist()
        gen = generate(lm, st, torch.full((len(rows), 1), end), 3, -1, tok.pad_token_id)
    assert st.attention_mask[:, -gen.n_passes:].eq(1).all()
    assert st.next_position.tolist() == (mask.sum(-1) + st.active.sum(-1) + gen.n_passes).tolist()


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_sampled_rollout_matches_full_recompute(tok, preset):
    """Sampled latents, sampled stops and tokens at temperature 0.7: each slot's (mu, logvar), the stop logits on the
    sampled z, and every token's log-prob at that temperature equal a full recompute of the sampled sequence."""
    lm = varied_lm(preset, tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    rows = _rows(tok) * 2
    ids, mask = _batch(rows, tok.pad_token_id)
    slots = torch.tensor(SLOTS * 2)
    with torch.no_grad():
        sh.mlp[2].bias.copy_(torch.tensor([0.0, -1.5]))
        lh.logvar.bias.fill_(-1.0)
    _, _, end = latent_token_ids(tok)
    T = 0.7
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=C, sample_latents=True,
                          stop_mode="sample", generator=g)
        gen = generate(lm, st, torch.full((len(rows), 1), end), 5, -1, tok.pad_token_id, temperature=T, generator=g)
        table = lm.get_input_embeddings()
        for i, r in enumerate(rows):
            n_act = int(st.active[i].sum())
            assert st.active[i, :n_act].all() and not st.active[i, n_act:].any()
            stop_slot = st.stopped[i].nonzero().flatten().tolist()
            assert stop_slot == ([n_act] if n_act < int(slots[i]) else [])
            seen = n_act + len(stop_slot)  # slots whose z was drawn for this row
            emb = torch.cat([table(torch.tensor(r)), st.z[i, :n_act]])
            hid = lm.base_model(inputs_embeds=emb[None]).last_hidden_state[0]
            P = len(r)
            for t in range(seen):
                mu, logvar = lh(hid[P - 1 + t])
                torch.testing.assert_close(st.mu[i, t], mu, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(st.logvar[i, t], logvar, atol=1e-4, rtol=1e-4)
                assert not torch.allclose(st.z[i, t], mu)  # sampled, not the mean
                if t % C == 0:
                    torch.testing.assert_close(st.stop_logits[i, t], sh(st.z[i, t]), atol=1e-5, rtol=1e-5)
            toks = gen.tokens[i][gen.mask[i]]
            full = torch.cat([emb, table(torch.cat([torch.tensor([end]), toks[:-1]]))])
            logits = lm.get_output_embeddings()(lm.base_model(inputs_embeds=full[None]).last_hidden_state[0])
            lp = torch.log_softmax(logits[-len(toks):] / T, -1).gather(-1, toks[:, None])[:, 0]
            torch.testing.assert_close(gen.logprobs[i][gen.mask[i]], lp, atol=1e-4, rtol=1e-4)
    assert len(set(st.active.sum(-1).tolist())) > 1


def test_sampling_distributions(tok):
    """Over many rows of one prompt: z = mu + sigma * eps with eps ~ N(0, 1) and sigma = exp(logvar / 2); a row stops
    with probability p(stop); answer tokens are drawn from softmax(logits / T)."""
    lm = varied_lm("llama-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    with torch.no_grad():
        lh.logvar.bias.fill_(-2.0)  # sigma ~ 0.37: exp(logvar) or exp(-logvar/2) would be far off
        sh.mlp[2].bias.copy_(torch.tensor([0.0, -1.2]))  # p(stop) well below 1/2
    N = 600
    r = _rows(tok)[2]
    ids, mask = torch.tensor([r] * N), torch.ones(N, len(r), dtype=torch.long)
    _, _, end = latent_token_ids(tok)
    T = 0.5
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.full((N,), 4), latent_head=lh, stop_head=sh, c=C,
                          sample_latents=True, stop_mode="sample", generator=g)
        with Capture(lm.get_output_embeddings()) as cap:
            gen = generate(lm, st, torch.full((N, 1), end), 1, -1, tok.pad_token_id, temperature=T, generator=g)
    eps = (st.z[:, 0] - st.mu[:, 0]) / torch.exp(0.5 * st.logvar[:, 0])
    assert abs(eps.mean().item()) < 0.02 and abs(eps.std().item() - 1) < 0.02
    p_stop = torch.softmax(st.stop_logits[:, 0], -1)[:, 1]
    assert 0.1 < p_stop.mean() < 0.35
    assert abs(st.stopped[:, 0].float().mean() - p_stop.mean()) < 0.06
    # tokens: log-likelihood ratio of the draws under softmax(logits/T) against softmax(logits) is positive in
    # expectation (a KL) only when the draws come from the former
    logits = cap.out[0].float()
    x = gen.tokens[:, 0:1]
    lp_t, lp_1 = torch.log_softmax(logits / T, -1), torch.log_softmax(logits, -1)
    kl = (lp_t.exp() * (lp_t - lp_1)).sum(-1).mean()
    assert kl > 0.05  # the two distributions differ enough to tell apart
    llr = (lp_t.gather(-1, x) - lp_1.gather(-1, x)).mean()
    assert llr > 0.5 * kl
    torch.testing.assert_close(gen.logprobs[:, 0], lp_t.gather(-1, x)[:, 0])


def test_forced_stop_records_the_first_masked_group_start(tok):
    """Teacher forcing (SFT, RL re-scoring): activity is given; the stop is recorded at the first masked group start,
    consultations at every in-range group start."""
    lm = varied_lm("llama-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    ids, mask = _batch(_rows(tok)[:3], tok.pad_token_id)
    forced = torch.tensor([[True, True, False, False, False, False],
                           [True, True, True, True, True, True],
                           [False, False, False, False, False, False]])
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.tensor([6, 6, 4]), latent_head=lh, stop_head=sh, c=C,
                          stop_mode="forced", forced_active=forced)
    assert st.active.tolist() == forced.tolist()
    assert st.stopped.nonzero().tolist() == [[0, 2], [2, 0]]
    assert st.consulted.tolist() == [[t % 2 == 0 and t < s for t in range(6)] for s in (6, 6, 4)]


def test_stop_mode_never_runs_every_slot_as_without_a_stop_head(tok):
    """"never" (eval --all-latents): a stop head that stops rows at different group starts under greedy is read but
    ignored, so every row runs all its slots, with the latents a run without a stop head computes."""
    lm = varied_lm("llama-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    ids, mask = _batch(_rows(tok), tok.pad_token_id)
    slots = torch.tensor(SLOTS)
    used = _stop_spread(lm, lh, sh, ids, mask, slots)
    assert used != SLOTS  # greedy stops some rows early
    with torch.no_grad():
        never = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=C, stop_mode="never")
        bare = fill_latents(lm, ids, mask, slots, latent_head=lh, c=C)
    assert never.active.sum(-1).tolist() == SLOTS
    assert never.active.tolist() == bare.active.tolist() and not never.stopped.any()
    torch.testing.assert_close(never.z[never.active], bare.z[bare.active])
    torch.testing.assert_close(never.last_hidden, bare.last_hidden)


def test_teacher_forced_logits_match_full_recompute(tok):
    """Hidden states and logits of the cached suffix pass equal one full pass over the whole sequence."""
    for preset in ("llama-tiny", "gpt2-tiny"):
        lm = varied_lm(preset, tok)
        lh, _ = _heads("vae", lm.config.hidden_size)
        rows = _rows(tok)[:3]
        ids, mask = _batch(rows, tok.pad_token_id)
        _, _, end = latent_token_ids(tok)
        suffix = torch.tensor([[end, 7, 8, 9], [end, 10, 0, 0], [end, 11, 12, 0]])
        smask = (torch.arange(4)[None] < torch.tensor([4, 2, 3])[:, None]).long()
        slots = torch.tensor([3, 1, 2])
        with torch.no_grad():
            st = fill_latents(lm, ids, mask, slots, latent_head=lh)
            logits = teacher_force(lm, st, suffix, smask)
            table = lm.get_input_embeddings()
            for i, r in enumerate(rows):
                z = st.z[i, : int(slots[i])]
                s = suffix[i, : int(smask[i].sum())]
                emb = torch.cat([table(torch.tensor(r)), z, table(s)])[None]
                full = lm(inputs_embeds=emb).logits[0, -len(s):]
                torch.testing.assert_close(logits[i, : len(s)], full, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(logits[0, 1], logits[0, 2], atol=1e-2)


def test_row_alone_equals_row_in_batch(tok):
    lm = varied_lm("gpt2-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    rows, slots = _rows(tok), torch.tensor(SLOTS)
    ids, mask = _batch(rows, tok.pad_token_id)
    _stop_spread(lm, lh, sh, ids, mask, slots)
    with torch.no_grad():
        both = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=C)
        for i, r in enumerate(rows):
            one = fill_latents(lm, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), slots[i: i + 1],
                               latent_head=lh, stop_head=sh, c=C)
            k = one.z.shape[1]
            assert both.active[i, :k].tolist() == one.active[0].tolist() and not both.active[i, k:].any()
            torch.testing.assert_close(both.z[i, :k][one.active[0]], one.z[0][one.active[0]], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(both.last_hidden[i], one.last_hidden[0], atol=1e-5, rtol=1e-5)
    assert len(set(both.active.sum(-1).tolist())) > 2


def test_masked_latents_change_nothing(tok):
    """A row forced to use 2 of 6 slots equals the same row built with only 2 slots."""
    lm = varied_lm("gpt2-tiny", tok)
    lh, _ = _heads("vae", lm.config.hidden_size)
    r = _rows(tok)[2]
    ids, mask = torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)
    _, _, end = latent_token_ids(tok)
    suffix, smask = torch.tensor([[end, 7, 8]]), torch.ones(1, 3, dtype=torch.long)
    with torch.no_grad():
        six = fill_latents(lm, ids, mask, torch.tensor([6]), latent_head=lh, stop_mode="forced",
                           forced_active=torch.tensor([[True, True, False, False, False, False]]))
        a = teacher_force(lm, six, suffix, smask)
        two = fill_latents(lm, ids, mask, torch.tensor([2]), latent_head=lh)
        b = teacher_force(lm, two, suffix, smask)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_loop_ends_when_every_row_stopped(tok):
    lm = varied_lm("llama-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    with torch.no_grad():
        sh.mlp[2].weight.zero_()
        sh.mlp[2].bias.copy_(torch.tensor([-5.0, 5.0]))  # always stop
    ids, mask = _batch(_rows(tok), tok.pad_token_id)
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.tensor([8, 8, 8, 8]), latent_head=lh, stop_head=sh, c=C)
    assert st.n_passes == 1  # only the prefix pass
    assert st.z.shape[1] == 1 and int(st.active.sum()) == 0
    assert st.stopped[:, 0].all()


def test_position_ids_skip_masked_slots(tok):
    lm = varied_lm("llama-tiny", tok)
    ids, mask = _batch(_rows(tok)[:3], tok.pad_token_id)
    forced = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.tensor([3, 3, 3]), stop_mode="forced", forced_active=forced)
    assert st.next_position.tolist() == (mask.sum(-1) + forced.sum(-1)).tolist()
