"""The latent engine against a slow full-recompute reference, across padding, batching and stops."""

import pytest
import torch

from atp_latent.modeling.engine import fill_latents, generate, teacher_force
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import LatentHead, StopHead
from atp_latent.modeling.reference import reference_row
from atp_latent.modeling.tokenizer import build_word_tokenizer, latent_token_ids

CORPUS = ["Tom has 3 apples and 4 pears.", "How many fruits does he have?", "<<3+4=7>>\n### 7"]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(CORPUS)


def _model(preset, tok, seed=0):
    torch.manual_seed(seed)
    lm = build_tiny_model(preset, tok, seed=seed).eval()
    return lm


def _rows(tok):
    s, _, _ = latent_token_ids(tok)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [
        [tok.bos_token_id, *enc("Tom has 3 apples."), s],
        [tok.bos_token_id, *enc("How many?"), s],
        [tok.bos_token_id, *enc("Tom has 3 apples and 4 pears. How many fruits?"), s],
    ]


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
    sh = StopHead(d).eval()
    return lh, sh


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("kind", ["coconut", "vae", "vae+stop"])
def test_engine_matches_full_recompute(tok, preset, kind):
    lm = _model(preset, tok)
    lh, sh = _heads(kind, lm.config.hidden_size)
    rows, slots = _rows(tok), [4, 2, 6]
    if sh is not None:
        # A stop head that stops row-dependently: bias towards stop so some rows stop early.
        with torch.no_grad():
            sh.mlp[2].bias.copy_(torch.tensor([0.0, 0.1]))
    ids, mask = _batch(rows, tok.pad_token_id)
    _, _, end = latent_token_ids(tok)
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.tensor(slots), latent_head=lh, stop_head=sh, c=2)
        # Inspect logits of the first answer step through teacher forcing on a copy of the same state.
        gen = generate(lm, st, torch.full((3, 1), end), 6, tok.eos_token_id, tok.pad_token_id)
    if sh is not None:
        assert len(set(st.active.sum(-1).tolist())) > 1, "rows should stop at different slots"
    for i, r in enumerate(rows):
        ref = reference_row(lm, r, slots[i], end, tok.eos_token_id, 6, latent_head=(lambda h: lh(h)) if lh else None,
                            stop_head=sh, c=2)
        n_act = len(ref["z"])
        assert int(st.active[i].sum()) == n_act
        active_idx = st.active[i].nonzero().flatten()
        for j, t in enumerate(active_idx):
            torch.testing.assert_close(st.z[i, t], ref["z"][j], atol=1e-4, rtol=1e-4)
        n = len(ref["tokens"])
        assert gen.tokens[i, :n].tolist() == ref["tokens"]


def test_teacher_forced_logits_match_full_recompute(tok):
    """Hidden states and logits of the cached suffix pass equal one full pass over the whole sequence."""
    lm = _model("llama-tiny", tok)
    lh, _ = _heads("vae", lm.config.hidden_size)
    rows = _rows(tok)
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


def test_row_alone_equals_row_in_batch(tok):
    lm = _model("gpt2-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    rows, slots = _rows(tok), torch.tensor([4, 2, 6])
    ids, mask = _batch(rows, tok.pad_token_id)
    with torch.no_grad():
        both = fill_latents(lm, ids, mask, slots, latent_head=lh, stop_head=sh, c=2)
        for i, r in enumerate(rows):
            one = fill_latents(lm, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long), slots[i: i + 1],
                               latent_head=lh, stop_head=sh, c=2)
            k = one.z.shape[1]
            torch.testing.assert_close(both.z[i, :k][one.active[0]], one.z[0][one.active[0]], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(both.last_hidden[i], one.last_hidden[0], atol=1e-5, rtol=1e-5)


def test_masked_latents_change_nothing(tok):
    """A row forced to use 2 of 6 slots equals the same row built with only 2 slots."""
    lm = _model("llama-tiny", tok)
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
    lm = _model("llama-tiny", tok)
    lh, sh = _heads("vae+stop", lm.config.hidden_size)
    with torch.no_grad():
        sh.mlp[2].weight.zero_()
        sh.mlp[2].bias.copy_(torch.tensor([-5.0, 5.0]))  # always stop
    ids, mask = _batch(_rows(tok), tok.pad_token_id)
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.tensor([8, 8, 8]), latent_head=lh, stop_head=sh, c=2)
    assert st.n_passes == 1  # only the prefix pass
    assert int(st.active.sum()) == 0
    assert st.stopped[:, 0].all()


def test_position_ids_skip_masked_slots(tok):
    lm = _model("llama-tiny", tok)
    ids, mask = _batch(_rows(tok), tok.pad_token_id)
    forced = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    with torch.no_grad():
        st = fill_latents(lm, ids, mask, torch.tensor([3, 3, 3]), stop_mode="forced", forced_active=forced)
    assert st.next_position.tolist() == (mask.sum(-1) + forced.sum(-1)).tolist()
