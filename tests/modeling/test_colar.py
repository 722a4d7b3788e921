"""CoLaR (methods/colar.py, modeling/compressed.py): the compressed sequence by hand (grouping, drawn labels, the end
label, the prompt's c), group pooling by hand, the SFT losses against an uncached one-row-at-a-time reference (the
target is the next group, the last one the end token's embedding), the LM-head stop against a reference decoding
loop (it fires, later slots are masked, the answer is what the shorter chain gives), and RL scoring of that stop
exactly as it was sampled (answer stream's first token, no "continue" term, first PPO ratio 1)."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import IGNORE, Curriculum, SequenceBuilder, builder_for, collate, left_pad
from atp_latent.modeling.compressed import compress
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import gaussian_log_density
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import grpo_update, rollout, stream_masks

PROBLEMS = [
    Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 bags of 5 pens and loses 1. How many pens?", steps=["2*5=10", "10-1=9"], answer="9"),
    Problem(question="Cy has 6 eggs and eats 2. He buys 13. How many eggs?", steps=["6-2=4", "4+13=17"], answer="17"),
]
CUR = Curriculum(latents_per_step=1, max_latent_stage=8)


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])


def make(tok, seed=0, **kw) -> LatentReasoner:
    torch.manual_seed(seed)
    spec = ReasonerSpec.for_method("colar", latents_per_step=1, max_latent_stage=8, **kw)
    return LatentReasoner(build_tiny_model("llama-tiny", tok, seed=seed), spec).eval()


def words(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_compressed_sequence_by_hand(tok):
    """c = 3 on "<<3+4=7>>\\n" (10 tokens): groups of 3 from the first token, the last one shorter; each label one
    token of its group; the end label after the last group; "(3)" in the prompt before <|start-latent|>; the
    suffix is the answer, as in every method."""
    b = SequenceBuilder(tok, "colar", CUR)
    e = b.build(PROBLEMS[0], 3, random.Random(7))
    assert [words(tok, g) for g in e.comp_groups] == [["<", "<", "3"], ["+", "4", "="], ["7", ">", ">"], ["\n"]]
    assert e.n_slots == e.n_active == 4
    assert len(e.comp_labels) == 5 and e.comp_labels[-1] == b.end_id
    assert all(lab in g for lab, g in zip(e.comp_labels, e.comp_groups))
    assert words(tok, e.prefix[-5:]) == ["(", "3", ")", "\n", "<|start-latent|>"]
    assert words(tok, e.suffix) == ["<|end-latent|>", "#", "#", "#", "▁", "7", "<|eos|>"]
    assert e.labels[0] == IGNORE and e.labels[1:] == e.suffix[1:]
    # labels are drawn: over many draws every token of a group is drawn, and only those
    drawn = {b.build(PROBLEMS[0], 3, random.Random(s)).comp_labels[1] for s in range(60)}
    assert drawn == set(e.comp_groups[1])
    # c = 1: each chain token is its own group and its own label (CoT on embeddings)
    one = b.build(PROBLEMS[0], 1, random.Random(0))
    assert [g[0] for g in one.comp_groups] == one.comp_labels[:-1] == b.chain_ids(PROBLEMS[0])
    # evaluation asks for eval_compression
    assert words(tok, builder_for(tok, make(tok).spec).eval_prompt(PROBLEMS[0].question)[0][-5:-2]) == ["(", "2", ")"]


def test_group_pooling_by_hand(tok):
    """sum / sqrt(n) over the group's valid tokens; padding contributes nothing."""
    emb = torch.nn.Embedding(5, 3)
    with torch.no_grad():
        emb.weight.copy_(torch.arange(15, dtype=torch.float).view(5, 3))
    ids = torch.tensor([[[1, 2, 4], [3, 0, 0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 0, 0]]])
    got = compress(emb, ids, mask)
    expect = torch.tensor([[[(3 + 6 + 12) / math.sqrt(3), (4 + 7 + 13) / math.sqrt(3), (5 + 8 + 14) / math.sqrt(3)],
                            [9.0, 10.0, 11.0]]])
    torch.testing.assert_close(got, expect)


def reference_losses(model, examples, kind="nll", eps=None):
    """One row at a time, uncached, over [prefix | pooled groups | suffix] embeddings: CE summed over every label
    (group labels, the end label, the answer) and the latent loss over the K + 1 states before each group and after
    the last, against the next group's embedding (the end token's after the last) / emb_std."""
    lm, head, std = model.lm, model.latent_head, model.spec.emb_std
    E = lm.get_input_embeddings()
    ce_sum, n_ce, lat_sum, n_lat = 0.0, 0, 0.0, 0
    for i, ex in enumerate(examples):
        groups = torch.stack([E(torch.tensor(g)).sum(0) / math.sqrt(len(g)) for g in ex.comp_groups])
        x = torch.cat([E(torch.tensor(ex.prefix)), groups, E(torch.tensor(ex.suffix))])[None]
        h = lm.base_model(inputs_embeds=x).last_hidden_state[0]
        P, K = len(ex.prefix), len(ex.comp_groups)
        before = h[P - 1: P + K]
        logits = lm.get_output_embeddings()(torch.cat([before, h[P + K: -1]])).float()
        labels = torch.tensor(ex.comp_labels + ex.labels[1:])
        keep = labels != IGNORE
        ce_sum += F.cross_entropy(logits[keep], labels[keep], reduction="sum")
        n_ce += int(keep.sum())
        target = torch.cat([groups, E(torch.tensor([ex.comp_labels[-1]]))]) / std
        mu, logvar = head(before)
        if kind == "nll":
            per = (0.5 * (logvar + (target - mu) ** 2 / logvar.exp() + math.log(2 * math.pi))).mean(-1)
        else:
            per = ((mu + torch.exp(0.5 * logvar) * eps[i, : K + 1] - target) ** 2).mean(-1)
        lat_sum += per.sum()
        n_lat += K + 1
    return ce_sum / n_ce, lat_sum / n_lat


@pytest.mark.parametrize("kind", ["nll", "mse"])
def test_sft_losses_equal_an_uncached_reference(tok, kind):
    """A batch of rows with different numbers of groups (right-padded groups, left-padded prefixes): CE and latent
    loss equal the reference's; the loss is ce + latent_weight x latent; the gradient reaches the LM and the head."""
    model = make(tok, latent_loss=kind, latent_weight=0.5)
    b = SequenceBuilder(tok, "colar", CUR)
    examples = [b.build(p, 2, random.Random(i)) for i, p in enumerate(PROBLEMS)]
    assert len({len(e.comp_groups) for e in examples}) > 1 and len({len(e.prefix) for e in examples}) > 1
    batch = collate(examples, tok.pad_token_id)
    torch.manual_seed(11)
    out = model(batch)
    K, d = batch["comp_ids"].shape[1], model.lm.config.hidden_size
    torch.manual_seed(11)  # the MSE's reparameterised sample: the only draw in the pass
    eps = torch.randn(len(examples), K + 1, d)
    ce, lat = reference_losses(model, examples, kind, eps)
    torch.testing.assert_close(out["ce"], ce, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["latent"], lat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], ce + 0.5 * lat, atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    assert model.latent_head.mu.weight.grad.abs().sum() > 0
    assert model.lm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_emb_std_is_measured_once_and_kept(tok, tmp_path):
    model = make(tok)
    assert model.spec.emb_std == pytest.approx(float(model.lm.get_input_embeddings().weight.detach().float().std()))
    model.save_pretrained(tmp_path / "m", tok)
    with torch.no_grad():
        model.lm.get_input_embeddings().weight.mul_(3)  # a later table does not change the saved scale
    loaded, _ = LatentReasoner.from_pretrained(tmp_path / "m", spec=ReasonerSpec.for_method("colar"))
    assert loaded.spec.emb_std == model.spec.emb_std
    fixed = make(tok, emb_std=0.5)  # the paper config's upstream constant
    assert fixed.spec.emb_std == 0.5


def reference_greedy(model, prefix: list[int], n_slots: int):
    """The greedy latent chain of one question without a stop, uncached: per slot t the argmax token of the LM head
    on the state before it (t >= 1) and the latent fed (emb_std x the head's mean)."""
    lm, E = model.lm, model.lm.get_input_embeddings()
    x = E(torch.tensor(prefix))[None]
    tops = [None]
    for t in range(n_slots):
        h = lm.base_model(inputs_embeds=x).last_hidden_state[0, -1]
        if t >= 1:
            tops.append(int(lm.get_output_embeddings()(h).argmax()))
        mu, _ = model.latent_head(h)
        x = torch.cat([x, (mu * model.spec.emb_std)[None, None]], dim=1)
    return tops


@torch.no_grad()
def test_lm_head_stop_fires_masks_later_slots_and_answers_as_the_shorter_chain(tok):
    """With the end token set to one the LM head's argmax reaches in the first question's chain, each row stops at
    the first slot t >= 1 whose argmax it is (from an uncached reference loop); later slots are masked, and the
    answer equals the one a chain cut to that many slots (no stop) gives."""
    model = make(tok, seed=3)
    b = builder_for(tok, model.spec)
    prompts = [b.eval_prompt(p.question)[0] for p in PROBLEMS]
    n = 8
    tops = [reference_greedy(model, p, n) for p in prompts]
    end = next((tok_id for tok_id in tops[0][2:] if tok_id not in tops[0][:2]), tops[0][1])
    expect = [next((t for t in range(1, n) if top[t] == end), n) for top in tops]
    assert min(expect) < n
    ids, mask = left_pad(prompts, tok.pad_token_id)
    slots = torch.full((len(prompts),), n)
    state, gen = model.answer(ids, mask, slots, end, tok.eos_token_id, tok.pad_token_id, 6)
    assert state.n_active.tolist() == expect
    for i, k in enumerate(expect):
        assert state.active[i, :k].all() and not state.active[i, k:].any()
        assert state.stopped[i].any() == (k < n)
    # the same rows with no stop and exactly that many slots
    model.spec.lm_head_stop = False
    try:
        cut_state, cut = model.answer(ids, mask, torch.tensor(expect), end, tok.eos_token_id, tok.pad_token_id, 6)
    finally:
        model.spec.lm_head_stop = True
    assert torch.equal(cut.tokens, gen.tokens)
    torch.testing.assert_close(cut_state.z[state.active], state.z[state.active])


@pytest.fixture(scope="module")
def rl_setup(tok, aim_end_latent):
    model = make(tok)
    b = builder_for(tok, model.spec)
    aim_end_latent(model, b, [p.question for p in PROBLEMS[:2]], logit=2.5)  # p(end) about 0.2 per slot
    cfg = load_config(None, ["method.name=colar-rl", "rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5",
                             "rl.w_fmt=0", "rl.w_coh=0", "rl.latent_logratio=mean", "rl.logratio_clamp=1e9"])
    traj = rollout(model, b, PROBLEMS[:2], cfg, torch.Generator().manual_seed(1), "cpu")
    return model, b, cfg, traj


@torch.no_grad()
def test_rl_scores_the_lm_head_stop_as_the_first_answer_token(tok, rl_setup):
    """The stop's log-prob is the LM head's log p(<|end-latent|>) on the state after the last latent (an uncached
    reference), as the answer stream's first position, counted only where the chain stopped; the latent stream is
    the per-dimension Gaussian term alone (no "continue" decisions); the answer tokens score as sampled."""
    model, b, cfg, traj = rl_setup
    batch = traj.batch
    stopped = batch["rl_stopped"].any(-1)
    assert stopped.any() and not stopped.all()
    scored = model.score(batch)
    assert scored["answer"].shape[1] == batch["rl_tokens"].shape[1] + 1 and not scored["stop"].any()
    lm, E = model.lm, model.lm.get_input_embeddings()
    for i in range(batch["rl_z"].shape[0]):
        k = int(batch["rl_active"][i].sum())
        prefix = batch["prefix_ids"][i][batch["prefix_mask"][i].bool()]
        x = torch.cat([E(prefix), batch["rl_z"][i, :k] * model.spec.emb_std])[None]
        h = lm.base_model(inputs_embeds=x).last_hidden_state[0, -1]
        ref = torch.log_softmax(lm.get_output_embeddings()(h).float(), -1)[b.end_id]
        if stopped[i]:
            torch.testing.assert_close(scored["answer"][i, 0], ref, atol=1e-5, rtol=1e-5)
        else:
            assert scored["answer"][i, 0] == 0
    mask = batch["rl_token_mask"]
    torch.testing.assert_close(scored["answer"][:, 1:][mask], traj.rollout_logps["answer"][mask], atol=1e-4,
                               rtol=1e-4)
    state = model.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"], b.end_id, stop_mode="forced",
                       forced_active=batch["rl_active"], forced_z=batch["rl_z"])
    gauss = gaussian_log_density(batch["rl_z"], state.mu, state.logvar) / batch["rl_z"].shape[-1]
    torch.testing.assert_close(scored["latent"], gauss * batch["rl_active"])
    masks = stream_masks(batch, cfg.rl.latent_policy)
    assert torch.equal(masks["answer"][:, 0], stopped) and torch.equal(masks["answer"][:, 1:], mask)
    assert not masks["stop"].any()


def test_rl_update_first_ratio_is_exactly_one_on_the_lm_head_stop(tok, rl_setup, aim_end_latent):
    """grpo_update on CoLaR trajectories: the first minibatch's ratio is exactly 1 on every stream (the stop in the
    answer's), and the update moves the LM."""
    from accelerate import Accelerator

    from atp_latent.training.rl import group_advantages

    model, b, cfg, traj = rl_setup
    model = make(tok)  # a fresh copy to update
    aim_end_latent(model, b, [p.question for p in PROBLEMS[:2]], logit=2.5)  # p(end) about 0.2 per slot
    before = model.lm.get_input_embeddings().weight.detach().clone()
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0, 0.0, 0.0])
    assert group_advantages(torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0]), 4).shape == adv.shape
    stats = grpo_update(model, opt, acc, traj, adv, cfg, torch.Generator().manual_seed(0))
    assert stats["first_ratio_dev"] == 0.0 and stats["stop_loss"] == 0.0
    assert not torch.equal(before, model.lm.get_input_embeddings().weight)


def test_colar_in_bf16(tok, aim_end_latent):
    """A bf16 CoLaR model (as the paper config trains it under autocast; here its weights in bf16): the compressed
    SFT pass gives finite losses and gradients, the engine answers with the LM-head stop, and RL re-scores a bf16
    rollout's answer tokens as sampled (the stop and latent streams in fp32)."""
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("colar", latents_per_step=1, max_latent_stage=8)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok, seed=0, dtype=torch.bfloat16), spec)
    assert model.latent_head.mu.weight.dtype == torch.bfloat16
    b = SequenceBuilder(tok, "colar", CUR)
    batch = collate([b.build(p, 2, random.Random(i)) for i, p in enumerate(PROBLEMS)], tok.pad_token_id)
    out = model(batch)
    assert torch.isfinite(out["loss"]) and out["latent"] > 0
    out["loss"].backward()
    assert torch.isfinite(model.latent_head.mu.weight.grad.float()).all()
    model.eval()
    aim_end_latent(model, builder_for(tok, spec), [p.question for p in PROBLEMS[:2]], logit=2.5)
    cfg = load_config(None, ["method.name=colar-rl", "rl.group_size=4", "rl.max_new_tokens=5", "rl.w_fmt=0",
                             "rl.w_coh=0", "rl.latent_logratio=mean"])
    traj = rollout(model, builder_for(tok, spec), PROBLEMS[:2], cfg, torch.Generator().manual_seed(1), "cpu")
    with torch.no_grad():
        scored = model.score(traj.batch)
    mask = traj.batch["rl_token_mask"]
    assert scored["answer"].dtype == scored["latent"].dtype == torch.float32
    torch.testing.assert_close(scored["answer"][:, 1:][mask], traj.rollout_logps["answer"][mask], atol=2e-2,
                               rtol=2e-2)
