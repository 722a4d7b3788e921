"""The coherence reward's cost: RL decodes only the plans whose coherence can change a reward (under the full
reward a wrong answer's coherence term is 0 whatever its plan says), and a decoded group stops costing once it has
written eos. Both must leave every reward and advantage exactly as decoding every plan in full gives them."""

import pytest
import torch

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import builder_for
from atp_latent.evaluation.plans import decode_plans
from atp_latent.modeling import reasoner as reasoner_mod
from atp_latent.modeling.engine import LatentState, backbone_forward, generate, new_cache
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training import rl
from atp_latent.training.rewards import RewardWeights, coherence_matters, total_reward
from atp_latent.training.rl import group_advantages, rollout

PROBLEMS = [
    Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 pens and gets 2 more. How many pens?", steps=["2+2=4"], answer="4"),
]
# per rollout (2 questions x G = 4): the answer text after <|end-latent|>; right: 0, 1, 3, 4, 6
ANSWERS = ["### 7", "### 7", "### 3", "### 7", "### 4", "### 5", "### 4", "7"]
RIGHT = [True, True, False, True, True, False, True, False]


@pytest.fixture(scope="module")
def setup():
    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=3)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok), spec).eval()
    with torch.no_grad():  # a stop head that sometimes stops: rows use different numbers of groups
        model.stop_head.mlp[2].bias.copy_(torch.tensor([0.0, -0.2]))
    return model, tok, builder_for(tok, spec)


def rl_cfg(reward: str = "full"):
    return load_config(None, ["rl.group_size=4", "rl.max_new_tokens=5", "rl.coherence_max_tokens=6",
                              f"rl.reward={reward}"])


def text_coherence(steps, pred, mode="strict"):
    """A stand-in coherence that depends on the decoded text and is never 0 (a random decoder's plans all score 0
    under the real one, so a skipped plan whose reward counts would go unnoticed)."""
    return (sum(len(s) + 3 * i for i, s in enumerate(steps)) % 7 + 1) / 8


def count_decoded(model, monkeypatch) -> list[int]:
    """Records the number of groups each decode_groups call decodes."""
    sizes = []
    real = model.decode_groups

    def counting(zg, *a, **kw):
        sizes.append(zg.shape[0])
        return real(zg, *a, **kw)

    monkeypatch.setattr(model, "decode_groups", counting)
    return sizes


def run(model, builder, cfg, seed=3):
    return rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(seed), "cpu")


@pytest.mark.parametrize("reward", ["full", "coherence_only"])
@pytest.mark.parametrize("coherence", ["real", "text"])
def test_skipping_unrewarded_plans_keeps_every_reward_and_advantage(setup, monkeypatch, script_answers, reward,
                                                                     coherence):
    """rollout() with the skip against rollout() decoding every plan (the behaviour before it): the same rewards and
    advantages to the bit, the same accuracy and format terms, the same coherence wherever it counts; under the full
    reward the wrong answers' plans are not decoded (fewer groups), under coherence_only every plan is."""
    model, tok, builder = setup
    cfg = rl_cfg(reward)
    G = cfg.rl.group_size
    script_answers(model, tok, ANSWERS)
    if coherence == "text":
        monkeypatch.setattr(rl, "coherence_reward", text_coherence)
    sizes = count_decoded(model, monkeypatch)
    fast = run(model, builder, cfg)
    with monkeypatch.context() as m:  # without the optimisation: every rollout's plan decoded and scored
        m.setattr(rl, "coherence_matters", lambda acc, w, only=False: bool(w.coherence))
        full = run(model, builder, cfg)
    assert fast.terms["acc"].bool().tolist() == RIGHT
    assert torch.equal(fast.rewards, full.rewards)
    assert torch.equal(group_advantages(fast.rewards, G), group_advantages(full.rewards, G))
    assert torch.equal(fast.terms["acc"], full.terms["acc"]) and torch.equal(fast.terms["fmt"], full.terms["fmt"])
    counts = torch.ones(len(RIGHT), dtype=torch.bool) if reward == "coherence_only" else torch.tensor(RIGHT)
    assert torch.equal(fast.terms["coh"][counts], full.terms["coh"][counts])
    assert (fast.terms["coh"][~counts] == 0).all()
    for k, v in fast.batch.items():
        assert torch.equal(v, full.batch[k]), k
    groups = fast.batch["rl_active"][:, :: model.spec.latents_per_step].sum(-1)
    assert sizes == [int(groups[counts].sum()), int(groups.sum())]
    if reward == "full":
        assert sizes[0] < sizes[1]  # wrong answers with active groups: their plans were skipped
    if coherence == "text":  # the coherence that counts moves rewards and advantages, so a skipped plan would show
        assert (fast.terms["coh"][counts] > 0).all()
        assert len(set(fast.terms["coh"][counts].tolist())) > 1


def test_rollout_times_the_plan_decode_only_when_it_runs(setup, monkeypatch, script_answers):
    """Trajectories.plan_seconds (logged as train/plan_decode_seconds): the wall time of the coherence reward's plan
    decode, which covers the decode itself; 0 when no plan is decoded (every answer wrong under the full reward), and
    kept by dynamic sampling's group selection."""
    model, tok, builder = setup
    script_answers(model, tok, ANSWERS)
    real, timed = rl.decode_plans, []

    def slow(*a, **kw):
        t = rl.time.perf_counter()
        out = real(*a, **kw)
        rl.time.sleep(0.05)
        timed.append(rl.time.perf_counter() - t)
        return out

    monkeypatch.setattr(rl, "decode_plans", slow)
    traj = run(model, builder, rl_cfg("full"))
    (took,) = timed
    assert took <= traj.plan_seconds < took + 0.05
    assert traj.select_groups(torch.tensor([1]), 4).plan_seconds == traj.plan_seconds
    script_answers(model, tok, ["### 1"] * len(ANSWERS))  # every answer wrong: no plan counts, none is decoded
    assert run(model, builder, rl_cfg("full")).plan_seconds == 0.0 and len(timed) == 1


@pytest.mark.parametrize("reward", ["full", "coherence_only"])
def test_every_plan_whose_reward_counts_is_decoded(setup, monkeypatch, script_answers, reward):
    """Each counted rollout's coherence is that of its own plan, decoded with all groups of all rollouts in one
    batch: a rollout whose reward depends on its plan must never be skipped (nor read another row's plan)."""
    model, tok, builder = setup
    cfg = rl_cfg(reward)
    script_answers(model, tok, ANSWERS)
    monkeypatch.setattr(rl, "coherence_reward", text_coherence)
    states = []
    real_decode_plans = rl.decode_plans

    def recording(model_, state, *a, **kw):
        states.append(state)
        return real_decode_plans(model_, state, *a, **kw)

    monkeypatch.setattr(rl, "decode_plans", recording)
    traj = run(model, builder, cfg, seed=5)
    (state,) = states
    every = decode_plans(model, state, tok, cfg.rl.coherence_max_tokens)  # every plan, no skip
    w = rl.reward_weights(cfg)
    for i, right in enumerate(RIGHT):
        counts = reward == "coherence_only" or right
        coh = text_coherence(every[i], None) if counts else 0.0
        assert traj.terms["coh"][i].item() == pytest.approx(coh), i
        fmt = float(traj.terms["fmt"][i])
        expect = total_reward(float(right), fmt, coh, w, reward == "coherence_only")
        assert traj.rewards[i].item() == pytest.approx(expect), i
        if counts:  # the plan moves this reward: scoring it as skipped would give another one
            assert total_reward(float(right), fmt, 0.0, w, reward == "coherence_only") != pytest.approx(expect)


def test_decode_plans_keeps_only_the_rows_asked_for(setup):
    model, tok, builder = setup
    prompts = [builder.eval_prompt(p.question) for p in PROBLEMS for _ in range(3)]
    ids, mask = rl.left_pad([p for p, _ in prompts], tok.pad_token_id)
    n_slots = torch.tensor([s for _, s in prompts])
    state, _ = model.answer(ids, mask, n_slots, builder.end_id, tok.eos_token_id, tok.pad_token_id, 2,
                            sample_latents=True, stop_mode="sample", generator=torch.Generator().manual_seed(1))
    keep = torch.tensor([True, False, True, True, False, False])
    every = decode_plans(model, state, tok, 6)
    some = decode_plans(model, state, tok, 6, keep=keep)
    assert [p for p, k in zip(every, keep) if k] == [p for p, k in zip(some, keep) if k]
    assert all(p == [] for p, k in zip(some, keep) if not k)
    assert any(p for p, k in zip(every, keep) if not k)  # a row left out had a plan


@pytest.mark.parametrize("coherence_only", [False, True])
@pytest.mark.parametrize("w", [RewardWeights(), RewardWeights(accuracy=0.0, format=0.5, coherence=1.0),
                               RewardWeights(coherence=0.0), RewardWeights(accuracy=2.0, format=0.0, coherence=-0.3)])
def test_coherence_matters_exactly_when_total_reward_depends_on_it(w, coherence_only):
    """The skip rule against the formula it stands for: where it says no, total_reward is the same float for every
    coherence; where it says yes, coherence changes it."""
    for acc in (0.0, 1.0):
        for fmt in (0.0, 1.0):
            got = {total_reward(acc, fmt, coh, w, coherence_only) for coh in (0.0, 0.25, 0.5, 1.0)}
            assert (len(got) > 1) == coherence_matters(acc, w, coherence_only), (acc, fmt)


def reference_decode_groups(model, zg, eos_id, pad_id, max_new_tokens, text_embed=None):
    """decode_groups as it was before finished rows left the batch: every row decoded to the end through
    engine.generate, pad after each row's eos."""
    dec = model.step_decoder
    text_embed = text_embed if text_embed is not None else model.lm.get_input_embeddings()
    N, c, _ = zg.shape
    cache = new_cache(dec)
    mask = torch.ones(N, c, dtype=torch.long)
    hidden = backbone_forward(dec, zg.to(text_embed.weight.dtype), mask, torch.arange(c)[None].expand(N, -1), cache)
    first = dec.get_output_embeddings()(hidden[:, -1]).argmax(-1)
    state = LatentState(cache, mask, torch.full((N,), c), hidden[:, -1], zg, None, None, torch.ones(N, 0, dtype=torch.bool),
                        None, torch.ones(N, 0, dtype=torch.bool), torch.ones(N, 0, dtype=torch.bool), 1)
    gen = generate(dec, state, first[:, None], max_new_tokens - 1, eos_id, pad_id, embed=text_embed)
    rest = torch.where((first == eos_id)[:, None], torch.full_like(gen.tokens, pad_id), gen.tokens)
    return torch.cat([first[:, None], rest], dim=1)


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
@torch.no_grad()
def test_decode_groups_drops_rows_that_wrote_eos(setup, monkeypatch, preset):
    """With an end token that some groups write early, others late and others never: the same tokens as decoding
    every row to the end, and each pass after the first runs only the rows that have not written it yet."""
    model, tok, builder = setup
    if preset != "llama-tiny":
        model = LatentReasoner(build_tiny_model(preset, tok), model.spec).eval()
    torch.manual_seed(4)
    d = model.lm.config.hidden_size
    zg = torch.randn(24, model.spec.latents_per_step, d)
    # a text table of unit-scale rows: the random decoder's greedy text then varies along a row (through the tiny
    # model's own table it repeats one token), so an end token is met at different columns
    table = torch.nn.Embedding(len(tok), d)
    T = 8
    never = len(tok) + 7  # an id no row writes: every row runs all T tokens
    free = model.decode_groups(zg, never, tok.pad_token_id, T, text_embed=table)
    assert free.shape == (24, T)
    # the end token: the one most groups write somewhere after their first token, but not all of them
    cand = torch.bincount(free[:, 1:].flatten(), minlength=len(tok)).argsort(descending=True)
    eos = next(int(t) for t in cand if 2 <= int((free[:, 1:] == t).any(-1).sum()) <= 20)
    sizes = []

    def counting(lm, embeds, *a, **kw):
        sizes.append(embeds.shape[0])
        return backbone_forward(lm, embeds, *a, **kw)

    expect = reference_decode_groups(model, zg, eos, tok.pad_token_id, T, table)
    monkeypatch.setattr(reasoner_mod, "backbone_forward", counting)
    got = model.decode_groups(zg, eos, tok.pad_token_id, T, text_embed=table)
    assert torch.equal(got, expect[:, : got.shape[1]]) and (expect[:, got.shape[1]:] == tok.pad_token_id).all()
    ended = (got == eos).float().cumsum(1) > 0  # [N, T']: the row has written eos at or before this column
    assert not ended[:, -1].all()  # some rows run to the end, others end at three columns or more
    assert len(set((got == eos).float().argmax(1)[ended.any(1)].tolist())) >= 3
    assert len(sizes) == got.shape[1] and sizes[0] == 24  # one pass per column, the first over every group
    for t in range(1, got.shape[1]):  # a pass runs every row still writing, and few that have ended: those leave
        writing = int((~ended[:, t - 1]).sum())  # once their remaining passes add up to a quarter of a batch pass
        assert sizes[t] >= writing and 4 * (sizes[t] - writing) * (T - t) < sizes[t], (t, sizes, writing)
    assert sum(sizes) < 24 * len(sizes)  # rows that ended stopped costing
    # a row whose first token is the end token leaves right after the prefix pass
    first = int(free[0, 0])
    out = model.decode_groups(zg, first, tok.pad_token_id, T, text_embed=table)
    assert (out[free[:, 0] == first, 1:] == tok.pad_token_id).all()
