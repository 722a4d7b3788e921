"""GRPO on the latent policy: rollout log-probs and rewards against hand computations, the update's gradient by
hand, the clipped surrogate, and a 2-process run equal to a 1-process run on the same global work."""

import copy
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import builder_for
from atp_latent.evaluation.answers import extract_answer
from atp_latent.evaluation.plans import decode_plans
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import END_LATENT, build_word_tokenizer
from atp_latent.training import rl
from atp_latent.training.rewards import coherence_reward
from atp_latent.training.rl import _select, clipped_surrogate, grpo_update, rollout
from atp_latent.training.runs import checkpoint_dir_for, checkpoint_weights

PROBLEMS = [
    Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 pens and gets 2 more. How many pens?", steps=["2+2=4"], answer="4"),
]


@pytest.fixture(scope="module")
def setup():
    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=3)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok), spec).eval()
    with torch.no_grad():  # a stop head that sometimes stops, so the stop stream is exercised
        model.stop_head.mlp[2].bias.copy_(torch.tensor([0.0, -0.2]))
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5"])
    return model, tok, builder_for(tok, spec), cfg


def test_rollout_logprobs_equal_recomputed(setup):
    model, tok, builder, cfg = setup
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(1), "cpu")
    assert traj.batch["rl_active"].any() and traj.batch["rl_token_mask"].any()
    with torch.no_grad():
        scored = model.score(traj.batch)
    mask = traj.batch["rl_token_mask"]
    torch.testing.assert_close(scored["answer"][mask], traj.rollout_logps["answer"][mask], atol=1e-4, rtol=1e-4)
    # The latent stream is the Gaussian log-density plus log p(continue) where the stop head was consulted.
    cont = traj.batch["rl_consulted"] & ~traj.batch["rl_stopped"]
    gauss_only = scored["latent"] - torch.where(cont, torch.log_softmax(
        model.fill(traj.batch["prefix_ids"], traj.batch["prefix_mask"], traj.batch["n_slots"], stop_mode="forced",
                   forced_active=traj.batch["rl_active"], forced_z=traj.batch["rl_z"]).stop_logits, -1)[..., 0],
        torch.zeros_like(scored["latent"]))
    act = traj.batch["rl_active"]
    torch.testing.assert_close(gauss_only[act], traj.rollout_logps["latent_gaussian"][act], atol=1e-3, rtol=1e-4)
    # The stop stream: log p(stop) of the sampled latent at the slot that stopped, 0 for rows that never stopped.
    b = traj.batch
    assert b["rl_stopped"].any(-1).any() and not b["rl_stopped"].any(-1).all()
    assert (b["rl_stopped"].sum(-1) <= 1).all()
    for i in range(b["rl_z"].shape[0]):
        where = b["rl_stopped"][i].nonzero().flatten().tolist()
        assert not b["rl_active"][i, where[0]:].any() if where else True
        expect = torch.log_softmax(model.stop_head(b["rl_z"][i, where[0]]), -1)[1] if where else torch.tensor(0.0)
        torch.testing.assert_close(scored["stop"][i], expect.detach(), atol=1e-5, rtol=1e-5)


class RecordingOptimizer:
    """Records each step's gradients and leaves the parameters alone, so every minibatch of an update is scored by
    the rollout policy (ratio 1) and its gradient has a closed form."""

    def __init__(self, params):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": 0.0}]
        self.grads = []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in self.params])


def test_grpo_update_gradient_by_hand(setup):
    """At ratio 1 the gradient of each minibatch's loss is -(1/m) sum_i A_i * grad of (mean of the row's active latent
    log-probs + its stop log-prob if it stopped + mean of its answer-token log-probs), over the minibatch that the
    update's permutation put together, with that row's own advantage."""
    model, tok, builder, cfg = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5", "rl.max_grad_norm=0"])
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(2), "cpu")
    b = traj.batch
    n = b["rl_z"].shape[0]
    assert b["rl_stopped"].any(-1).any() and not b["rl_stopped"].any(-1).all()  # the stop term is exercised
    adv = torch.randn(n, generator=torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = RecordingOptimizer(params)
    stats = grpo_update(model, opt, Accelerator(cpu=True), traj, adv, cfg, torch.Generator().manual_seed(0))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    chunks = [perm[i: i + 3] for i in range(0, n, 3)]
    assert len(opt.grads) == len(chunks) == 3
    for idx, got in zip(chunks, opt.grads):
        mb = {k: (v if v.dim() == 0 else v[idx]) for k, v in b.items()}
        out = model.score(mb)
        total = 0.0
        for j, i in enumerate(idx.tolist()):
            act, tm = mb["rl_active"][j], mb["rl_token_mask"][j]
            lat = out["latent"][j][act].sum() / max(int(act.sum()), 1)
            ans = out["answer"][j][tm].sum() / max(int(tm.sum()), 1)
            stop = out["stop"][j] if mb["rl_stopped"][j].any() else 0.0
            total = total - adv[i] * (lat + stop + ans)
        expect = torch.autograd.grad(total / len(idx), params, allow_unused=True)
        for p, g, e in zip(params, got, expect):
            torch.testing.assert_close(g, e if e is not None else torch.zeros_like(p), atol=1e-5, rtol=1e-3)
    assert stats["first_ratio_dev"] == 0.0
    assert stats["clip_frac_latent"] == 0.0 and stats["approx_kl_answer"] == 0.0  # the policy never moved
    # the logged loss values at ratio 1: -mean_i A_i over the rows that have positions in the stream
    has = {"latent_loss": b["rl_active"].any(-1), "stop_loss": b["rl_stopped"].any(-1),
           "answer_loss": b["rl_token_mask"].any(-1)}
    for name, rows in has.items():
        expect = sum(-float((adv[idx] * rows[idx]).sum()) / len(idx) for idx in chunks) / len(chunks)
        assert stats[name] == pytest.approx(expect, abs=1e-6), name
    assert stats["loss"] == pytest.approx(stats["latent_loss"] + stats["stop_loss"] + stats["answer_loss"], abs=1e-6)


def test_later_minibatches_are_scored_against_the_rollout_policy(setup):
    """Old log-probs are taken once, before the first update: minibatches after it see a moved policy (non-zero KL
    estimate, some clipping at a large learning rate), while the first one sees ratio exactly 1."""
    model, tok, builder, cfg = setup
    model = LatentReasoner(copy.deepcopy(model.lm), model.spec, decoder=model.decoder).eval()  # fresh heads
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(2), "cpu")
    adv = torch.randn(traj.rewards.shape[0], generator=torch.Generator().manual_seed(0))
    stats = grpo_update(model, opt, Accelerator(cpu=True), traj, adv, cfg, torch.Generator().manual_seed(0))
    assert stats["first_ratio_dev"] == 0.0
    assert stats["approx_kl_latent"] > 0 and stats["approx_kl_answer"] > 0
    assert stats["clip_frac_latent"] > 0
    assert stats["grad_norm"] > 0


def test_clipped_surrogate_by_hand():
    logp = torch.tensor([[0.0, 0.5], [0.0, -1.0]])
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = clipped_surrogate(logp, old, adv, mask, clip=0.2, clamp=3.0)
    # row 0: ratios 1, e^.5 (clipped to 1.2 for A>0) -> -(1 + 1.2)/2; row 1: ratio 1 -> -(1*-2) = 2 (one element)
    expect = (-(1 + 1.2) / 2 + 2.0) / 2
    torch.testing.assert_close(loss, torch.tensor(expect))
    assert stats["clipped"].item() == 1 and stats["n"].item() == 3


def test_clipped_surrogate_every_sign_and_clip_case_by_hand():
    """One position per row: A > 0 / A < 0, ratio above / below the clip range, the log-ratio clamp, no clip."""
    import math

    diff = torch.tensor([0.5, -0.5, 0.5, -0.5, 4.0, 0.1])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    logp = diff.clone()[:, None].requires_grad_(True)
    loss, stats = clipped_surrogate(logp, torch.zeros(6, 1), adv, torch.ones(6, 1), clip=0.2, clamp=3.0)
    e = math.exp
    # -min(r A, clip(r) A): 1.2 (clipped) | e^-.5 | -e^.5 | -0.8 (clipped) | 1.2 (clamped then clipped) | -e^.1
    per_row = [-1.2, -e(-0.5), e(0.5), 0.8, -1.2, e(0.1)]
    assert loss.item() == pytest.approx(sum(per_row) / 6, rel=1e-6)
    loss.backward()
    removed = torch.tensor([True, False, False, True, True, False])
    assert torch.equal(logp.grad[:, 0] == 0, removed)  # the stat counts exactly the positions without gradient
    assert stats["clipped"].item() == 3 and stats["n"].item() == 6
    lr = [0.5, -0.5, 0.5, -0.5, 3.0, 0.1]  # the k3 estimator on the clamped log-ratio
    assert stats["kl"].item() == pytest.approx(sum(e(x) - 1 - x for x in lr), rel=1e-6)


def test_select_keeps_scalars(setup):
    model, tok, builder, cfg = setup
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(3), "cpu")
    sub = _select(traj.batch, torch.tensor([0, 2]))
    assert sub["rl_z"].shape[0] == 2 and sub["end_id"].ndim == 0


SCRIPT = [  # per trajectory (2 questions x G = 4): the answer text after <|end-latent|>, and what it earns
    ("### 7", "7", 1, 1), ("### 7.0", "7.0", 1, 1), ("### 4", "4", 0, 1), ("7", None, 0, 0),
    ("### 4", "4", 1, 1), ("###", "", 0, 0), ("### 1,234", "1234", 0, 1), ("\n### 4", "4", 1, 0),
]


def test_rollout_rewards_by_hand(setup, monkeypatch, script_answers):
    """Scripted answers (the generation replaced, the latents real): each trajectory's gold is its own question's,
    answers are read after ###, and r = 1 * acc + 0.5 * fmt + 0.1 * coh * acc with coherence scored on the plan."""
    model, tok, builder, cfg = setup
    G = cfg.rl.group_size
    enc = script_answers(model, tok, [t for t, *_ in SCRIPT])
    plans = [["<<3+4=7>>"], ["<<3+4=8>>"], [], ["<<3+4=7>>"], ["<<2+2=4>>"], ["<<2+2=4>>"], ["<<2+2=4>>"],
             ["<<2*2=4>>", "<<4+0=4>>"]]
    monkeypatch.setattr(rl, "decode_plans", lambda *a, **k: plans)
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(6), "cpu")
    assert len(SCRIPT) == len(PROBLEMS) * G
    coh = [coherence_reward(p, pred) for p, (_, pred, _, _) in zip(plans, SCRIPT)]
    assert coh == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    for i, (text, pred, acc, fmt) in enumerate(SCRIPT):
        assert extract_answer(END_LATENT + text) == pred
        assert traj.terms["acc"][i] == acc and traj.terms["fmt"][i] == fmt, i
        assert traj.terms["coh"][i] == coh[i]
        assert traj.rewards[i].item() == pytest.approx(acc + 0.5 * fmt + 0.1 * coh[i] * acc), i
    assert traj.batch["rl_tokens"][:, 0].tolist() == [e[0] for e in enc]


def test_decode_plans_equals_one_group_at_a_time(setup):
    """The batched plan decode of a rollout equals decoding each active latent group of each row alone."""
    model, tok, builder, cfg = setup
    prompts = [builder.eval_prompt(p.question) for p in PROBLEMS for _ in range(3)]
    ids, mask = rl.left_pad([p for p, _ in prompts], tok.pad_token_id)
    n_slots = torch.tensor([s for _, s in prompts])
    state, _ = model.answer(ids, mask, n_slots, builder.end_id, tok.eos_token_id, tok.pad_token_id, 2,
                            sample_latents=True, stop_mode="sample", generator=torch.Generator().manual_seed(1))
    got = decode_plans(model, state, tok, 6)
    c, eos = model.spec.latents_per_step, tok.eos_token_id
    for i in range(len(prompts)):
        expect = []
        for g in range(state.z.shape[1] // c):
            if state.active[i, g * c]:
                row = model.decode_groups(state.z[i, g * c: g * c + c][None], eos, tok.pad_token_id, 6)[0].tolist()
                expect.append(tok.decode(row[: row.index(eos)] if eos in row else row))
        assert got[i] == expect, i
    assert len({len(p) for p in got}) > 1  # rows used different numbers of groups


def test_decode_plans_decodes_groups_with_equal_latents_once(setup, monkeypatch):
    """With the latents at their mean (rl.latent_policy=mean) the copies of a question share their latent groups:
    each distinct group is decoded once, and every row still gets the plan that decoding its groups alone gives."""
    model, tok, builder, cfg = setup
    prompts = [builder.eval_prompt(p.question) for p in PROBLEMS for _ in range(3)]
    ids, mask = rl.left_pad([p for p, _ in prompts], tok.pad_token_id)
    n_slots = torch.tensor([s for _, s in prompts])
    state, _ = model.answer(ids, mask, n_slots, builder.end_id, tok.eos_token_id, tok.pad_token_id, 2,
                            sample_latents=False, stop_mode="sample", generator=torch.Generator().manual_seed(1))
    c, eos = model.spec.latents_per_step, tok.eos_token_id
    active = [(i, g) for i in range(len(prompts)) for g in range(state.z.shape[1] // c) if state.active[i, g * c]]
    distinct = {tuple(state.z[i, g * c: g * c + c].flatten().tolist()) for i, g in active}
    assert len(distinct) < len(active)  # the copies share groups
    sizes, real = [], model.decode_groups
    monkeypatch.setattr(model, "decode_groups", lambda zg, *a, **k: sizes.append(zg.shape[0]) or real(zg, *a, **k))
    got = decode_plans(model, state, tok, 6)
    assert sizes == [len(distinct)]
    for i in range(len(prompts)):
        expect = []
        for g in range(state.z.shape[1] // c):
            if state.active[i, g * c]:
                row = real(state.z[i, g * c: g * c + c][None], eos, tok.pad_token_id, 6)[0].tolist()
                expect.append(tok.decode(row[: row.index(eos)] if eos in row else row))
        assert got[i] == expect, i


def _fixed_rollouts():
    path = Path(__file__).with_name("fixed_rollouts.py")
    spec = importlib.util.spec_from_file_location("fixed_rollouts", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, path


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


VARIANTS = ["all", "heads_only", "latent_mean", "token_norm"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_process_rl_equals_one_process(toy, rl_sets, monkeypatch, variant):
    """2 processes x 2 questions equal 1 process x 4 questions: each process takes its own consecutive questions,
    the all-reduced gradient is the 1-process one (same grad norm each step) and the final weights agree. Rollouts
    are drawn per question (tests/training/fixed_rollouts.py), so both runs see the same trajectories. The
    heads_only variant (rl.train_lm=false, rl.latent_temperature=2) leaves every LM weight at the start's; the
    latent_mean variant (rl.latent_policy=mean) carries its scale of 0 through the DDP-wrapped scoring; the
    token_norm variant (rl.loss_norm=token) divides by the global minibatch's positions, not each process's."""
    from atp_latent.training.rl import train_rl

    mod, script = _fixed_rollouts()
    common = {"rl.group_size": 4, "rl.steps": 2, "rl.lr": 2e-3, "rl.max_new_tokens": 4}
    if variant == "heads_only":
        common |= {"rl.train_lm": "false", "rl.latent_temperature": 2.0}
    if variant == "latent_mean":
        common |= {"rl.latent_policy": "mean"}
    if variant == "token_norm":
        common |= {"rl.loss_norm": "token"}
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(29561 + VARIANTS.index(variant)), str(script),
            *rl_sets(toy, f"rl2p_{variant}", **common, **{"rl.questions_per_step": 2, "rl.minibatch_size": 8})]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monkeypatch.setattr(rl, "rollout", mod.per_question_rollout)  # the 1-process run meanwhile, in this process
    mod._calls["n"] = 0
    one = train_rl(load_config(None, rl_sets(toy, f"rl1p_{variant}", **common, **{"rl.questions_per_step": 4,
                                                                                   "rl.minibatch_size": 16})))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    two = toy / f"rl2p_{variant}"
    r1, r2 = _metrics(one), _metrics(two)
    assert any(r.get("train/processes") == 2 and r.get("train/replicas_in_sync") == 1 for r in r2)
    g1 = [r["train/grad_norm"] for r in r1 if "train/grad_norm" in r]
    g2 = [r["train/grad_norm"] for r in r2 if "train/grad_norm" in r]
    assert len(g1) == len(g2) == 2 and all(g > 0 for g in g1)
    assert g1 == pytest.approx(g2, rel=1e-4)
    # step metrics are averaged over the processes, so the curves are the 1-process run's
    for key in ("train/reward", "train/reward_format", "train/active_latents", "train/equal_reward_groups"):
        assert [r[key] for r in r1 if key in r] == pytest.approx([r[key] for r in r2 if key in r], rel=1e-6), key
    start, _ = LatentReasoner.from_pretrained(checkpoint_weights(toy / "sft"))  # what model.init_from resolves to
    a, _ = LatentReasoner.from_pretrained(one / "final")
    b, _ = LatentReasoner.from_pretrained(two / "final")
    # Equal up to float summation order; AdamW's first steps turn the last bits of a near-zero gradient into a
    # whole update for a few elements, so the check is on each tensor's mean difference against its mean move.
    with torch.no_grad():
        for (name, x), y, x0 in zip(a.named_parameters(), b.parameters(), start.parameters()):
            moved, diff = (x - x0).abs().mean(), (x - y).abs()
            if name.startswith("decoder.") or (variant == "heads_only" and name.startswith("lm.")):  # frozen
                assert torch.equal(x, x0) and torch.equal(y, x0), name
                continue
            if variant == "latent_mean" and name.startswith("latent_head."):  # no gradient: weight decay alone
                torch.testing.assert_close(x, y, rtol=0, atol=1e-7)
                torch.testing.assert_close(x, x0 * (1 - 2e-3 * 0.01) ** 2, rtol=1e-6, atol=1e-7)
                continue
            assert moved > 0, name  # RL changed every trained tensor
            assert diff.mean() < 1e-3 * moved + 1e-9 and (diff > 1e-5).float().mean() < 1e-3, (name, diff.max(), moved)
        if variant == "all":
            assert (a.lm.get_input_embeddings().weight - start.lm.get_input_embeddings().weight).abs().mean() > 1e-4
    diag = {"train/reward_accuracy", "train/reward_format", "train/reward_coherence", "train/equal_reward_groups",
            "train/active_latents", "train/sigma", "train/clip_frac_latent", "train/approx_kl_answer",
            "train/grad_norm", "train/latents_used/hist"}
    assert diag <= set().union(*r2)


def test_micro_rl_run_raises_mean_reward(toy, rl_sets):
    from atp_latent.training.rl import train_rl

    over = {"rl.questions_per_step": 16, "rl.group_size": 8, "rl.minibatch_size": 32, "rl.steps": 30}
    run = train_rl(load_config(None, rl_sets(toy, "rl_micro", **over)))
    rewards = [json.loads(line)["train/reward"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if '"train/reward"' in line]
    assert len(rewards) == 30
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.02, (first, last)


def test_rollout_where_every_row_stops_early_can_be_rescored(setup):
    """The latent loop ends before n_slots when all rows stopped; re-scoring must replay exactly those slots."""
    model, tok, builder, cfg = setup
    with torch.no_grad():
        bias = model.stop_head.mlp[2].bias.clone()
        model.stop_head.mlp[2].weight.mul_(0)
        model.stop_head.mlp[2].bias.copy_(torch.tensor([-8.0, 8.0]))  # always stop at the first group start
    try:
        traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(4), "cpu")
        assert traj.batch["rl_z"].shape[1] < int(traj.batch["n_slots"].max())
        with torch.no_grad():
            scored = model.score(traj.batch)
        assert torch.isfinite(scored["stop"]).all() and (scored["stop"] < 0).all()
    finally:
        with torch.no_grad():
            model.stop_head.mlp[2].bias.copy_(bias)


# ----- paper-scale defects (regressions) -----

@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; tests that change mixed precision reset it around themselves."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("latent_temperature, latent_policy", [(1.0, "gaussian"), (3.0, "gaussian"), (1.0, "mean")])
def test_bf16_first_ratio_is_exactly_one(setup, fresh_accelerate_state, latent_temperature, latent_policy):
    """Under mixed_precision bf16, old and new log-probs come from the same autocast module call: ratio 1 (with a
    widened latent exploration, and with the latents at their mean, too)."""
    model, tok, builder, cfg = setup
    cfg = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, latent_temperature=latent_temperature,
                                                          latent_policy=latent_policy))
    model = LatentReasoner(copy.deepcopy(model.lm), model.spec, decoder=model.decoder)
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    wrapped, opt = acc.prepare(model, opt)
    wrapped.eval()
    with acc.autocast():
        traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(2), "cpu")
    adv = torch.randn(traj.rewards.shape[0], generator=torch.Generator().manual_seed(0))
    stats = grpo_update(wrapped, opt, acc, traj, adv, cfg, torch.Generator().manual_seed(0))
    assert stats["first_ratio_dev"] == 0.0 and stats["grad_norm"] > 0
    assert stats["approx_kl_answer"] > 0  # later minibatches did see the updated policy


def test_every_temperature_scores_through_the_wrapped_module(setup):
    """Old and new log-probs at temperature != 1 go through the (DDP-)wrapped module's forward, so gradients are
    all-reduced; the answer stream is the log-softmax at that temperature."""
    model, tok, builder, cfg = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5", "rl.temperature=0.5"])
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(5), "cpu")
    mask = traj.batch["rl_token_mask"]
    with torch.no_grad():  # the rollout sampled at 0.5 and recorded its log-probs: scoring must agree
        scored = model.score(traj.batch)
    torch.testing.assert_close(scored["answer"][mask], traj.rollout_logps["answer"][mask], atol=1e-4, rtol=1e-4)

    class Wrapper(torch.nn.Module):  # stands in for DDP: counts the calls that go through it
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, batch):
            self.calls += 1
            return self.inner(batch)

    wrapped = Wrapper(LatentReasoner(copy.deepcopy(model.lm), model.spec, decoder=model.decoder).eval())
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-4)
    adv = torch.randn(traj.rewards.shape[0], generator=torch.Generator().manual_seed(0))
    grpo_update(wrapped, opt, Accelerator(cpu=True), traj, adv, cfg, torch.Generator().manual_seed(0))
    n_chunks = -(-traj.rewards.shape[0] // cfg.rl.minibatch_size)
    assert wrapped.calls == 2 * n_chunks


@pytest.mark.parametrize("rewards", [
    [1.0 + 0.5 + 0.1 * 1.0] * 8,  # all correct, coherence 1: r = 1.6 (does not sum exactly in float32)
    [0.5 * 1.0 + 1.0 * (1 / 3)] * 8,  # coherence-only, r = 0.8333...
])
def test_equal_reward_groups_get_exactly_zero_advantage(rewards):
    from atp_latent.training.rl import equal_reward_groups, group_advantages

    r = torch.tensor(rewards + [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float32)
    adv = group_advantages(r, group_size=8)
    assert torch.equal(adv[:8], torch.zeros(8))
    # the other group by hand: mean 0.25, sample std sqrt(2 * 0.75^2 + 6 * 0.25^2) / 7)
    std = ((2 * 0.75**2 + 6 * 0.25**2) / 7) ** 0.5
    torch.testing.assert_close(adv[8:], torch.tensor([0.75, -0.25, -0.25, -0.25, 0.75, -0.25, -0.25, -0.25]) / std)
    assert equal_reward_groups(r, 8).tolist() == [True, False]


def test_rl_honours_model_dtype_and_warns_on_a_shared_decoder(tmp_path):
    """RL loads its start checkpoint in model.dtype (bf16 here, from an fp32 checkpoint), and a shared decoder,
    which makes the policy its own coherence judge, is flagged."""
    from atp_latent.data.formats import write_jsonl
    from atp_latent.training.rl import train_rl

    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=2, decoder_mode="shared")
    LatentReasoner(build_tiny_model("llama-tiny", tok), spec).save_pretrained(tmp_path / "start", tok)
    write_jsonl(tmp_path / "train.jsonl", PROBLEMS)
    sets = [f"data.train={tmp_path / 'train.jsonl'}", "data.val=null", "method.name=atp-rl",
            f"model.init_from={tmp_path / 'start'}", "model.dtype=bfloat16", "rl.questions_per_step=2",
            "rl.group_size=2", "rl.minibatch_size=4", "rl.steps=1", "rl.max_new_tokens=3", f"output_dir={tmp_path}",
            "name=rl"]
    with pytest.warns(UserWarning, match="own coherence judge"):
        run = train_rl(load_config(None, sets))
    final, _ = LatentReasoner.from_pretrained(run / "final")
    assert final.lm.dtype == torch.bfloat16 and final.latent_head.mu.weight.dtype == torch.bfloat16


def test_rl_start_is_the_first_best_candidate(toy, rl_sets):
    """RL validates its start policy at step 0: the val curve starts where SFT left off, and best/ holds the start
    unless some RL step beat it on val (so a run that only got worse keeps its start)."""
    from atp_latent.training.rl import train_rl

    over = {"rl.questions_per_step": 4, "rl.group_size": 4, "rl.minibatch_size": 16, "rl.steps": 3,
            "rl.val_every": 1, "rl.lr": 0.05}
    run = train_rl(load_config(None, rl_sets(toy, "rl_best", **over)))
    vals = [(r["step"], r["eval/val_accuracy"]) for r in _metrics(run) if "eval/val_accuracy" in r]
    assert [s for s, _ in vals] == [0, 1, 2, 3]
    best_step = max(vals, key=lambda sv: (sv[1], -sv[0]))[0]  # the first step with the highest val accuracy
    start, _ = LatentReasoner.from_pretrained(checkpoint_weights(toy / "sft"))
    best, _ = LatentReasoner.from_pretrained(checkpoint_weights(run / "best"))
    same = all(torch.equal(a, b) for a, b in zip(start.lm.parameters(), best.lm.parameters()))
    assert same == (best_step == 0), (vals, same)


def test_sign_test_p_by_hand():
    from atp_latent.training.rl import sign_test_p

    assert sign_test_p(6, 3) == (84 + 36 + 9 + 1) / 512  # P(X >= 6), X ~ Binomial(9, 1/2)
    assert sign_test_p(5, 0) == 1 / 32
    assert sign_test_p(0, 4) == 1.0 and sign_test_p(0, 0) == 1.0
    assert sign_test_p(2, 1) == 4 / 8


@pytest.mark.parametrize("max_p, script, best_step", [
    # val accuracy out of 10 per validation (steps 0-3), as problems gained / lost against the start (5 of 10 right)
    (1.0, [(0, 0), (1, 0), (1, 1), (2, 1)], 1),  # the reference's rule: the first highest accuracy, however slim
    (0.05, [(0, 0), (1, 0), (1, 1), (2, 1)], 0),  # +1 (p 0.5) and +2/-1 (p 0.5) are val noise: best/ = the start
    (0.05, [(0, 0), (1, 0), (5, 0), (4, 0)], 2),  # +5/-0 (p 1/32) beats the start beyond noise
])
def test_rl_best_checkpoint_needs_a_sign_test_against_the_start(toy, rl_sets, monkeypatch, max_p, script, best_step):
    """rl.best_max_p: a validated policy replaces best/ only when its val accuracy is the highest so far and it
    beats the start problem by problem (one-sided sign test p <= best_max_p); the p values are logged."""
    from types import SimpleNamespace

    from atp_latent.training.rl import sign_test_p

    start = [True] * 5 + [False] * 5
    calls = iter(script)

    def scripted_validate(model, builder, val_set, cfg, device):
        gained, lost = next(calls)
        correct = start[:5 - lost] + [False] * lost + [True] * gained + [False] * (5 - gained)
        return SimpleNamespace(accuracy=sum(correct) / 10, mean_tokens=3.0), correct

    monkeypatch.setattr(rl, "validate", scripted_validate)
    over = {"rl.questions_per_step": 2, "rl.group_size": 2, "rl.minibatch_size": 4, "rl.steps": 3,
            "rl.val_every": 1, "rl.best_max_p": max_p}
    run = rl.train_rl(load_config(None, rl_sets(toy, f"rl_best_p{max_p}_{best_step}", **over)))
    logged = [r for r in _metrics(run) if "eval/val_accuracy" in r]
    assert [r["eval/val_accuracy"] for r in logged] == [(5 + g - lo) / 10 for g, lo in script]
    assert [r["eval/val_sign_p_vs_start"] for r in logged[1:]] == [sign_test_p(g, lo) for g, lo in script[1:]]
    assert [(r["eval/val_gained_vs_start"], r["eval/val_lost_vs_start"]) for r in logged[1:]] == script[1:]
    state = torch.load(run / "best" / "trainer_state.pt", weights_only=False)
    assert state["progress"]["step"] == best_step


def test_rl_resume_keeps_the_start_for_the_sign_test(toy, rl_sets, monkeypatch):
    """The start policy's per-problem val answers travel in the checkpoint: a run killed after step 2 and resumed
    still tests later policies against its start (without them it would log p 0 and take any val gain as best/)."""
    from types import SimpleNamespace

    from atp_latent.training.rl import sign_test_p

    start = [True] * 5 + [False] * 5
    # (gained, lost) against the start per validation, steps 0-4; the first run dies at its step-3 validation
    script = [(0, 0), (0, 0), (0, 0), (1, 0), (0, 0)]
    calls = {"n": 0, "die_at": 3}

    def scripted_validate(model, builder, val_set, cfg, device):
        if calls["n"] == calls["die_at"]:
            calls["die_at"] = None
            raise KeyboardInterrupt("killed after the step-2 checkpoint")
        gained, lost = script[calls["n"]]
        calls["n"] += 1
        correct = start[:5 - lost] + [False] * lost + [True] * gained + [False] * (5 - gained)
        return SimpleNamespace(accuracy=sum(correct) / 10, mean_tokens=3.0), correct

    monkeypatch.setattr(rl, "validate", scripted_validate)
    over = {"rl.questions_per_step": 2, "rl.group_size": 2, "rl.minibatch_size": 4, "rl.steps": 4,
            "rl.val_every": 1, "rl.checkpoint_every": 1, "rl.best_max_p": 0.05}
    cfg = load_config(None, rl_sets(toy, "rl_best_resume", **over))
    with pytest.raises(KeyboardInterrupt):
        rl.train_rl(cfg)
    ckpt = checkpoint_dir_for(toy / "rl_best_resume", 2)
    killed_at = torch.load(ckpt / "trainer_state.pt", weights_only=False)["progress"]
    assert killed_at["step"] == 2 and killed_at["start_correct"] == start
    run = rl.train_rl(cfg, resume=True)
    logged = {r["step"]: r for r in _metrics(run) if "eval/val_accuracy" in r}
    assert sorted(logged) == [0, 1, 2, 3, 4]
    # step 3: one problem gained, none lost, p 0.5 > 0.05: the start stays best/ though val rose to 0.6
    assert logged[3]["eval/val_accuracy"] == 0.6
    assert (logged[3]["eval/val_gained_vs_start"], logged[3]["eval/val_lost_vs_start"]) == (1, 0)
    assert logged[3]["eval/val_sign_p_vs_start"] == sign_test_p(1, 0) == 0.5
    state = torch.load(run / "best" / "trainer_state.pt", weights_only=False)
    assert state["progress"]["step"] == 0

# ----- What each GRPO term adds to the gradient, by hand: the KL penalty to the start policy (its sign, and 0 before
# the first update under bf16 autocast), rl.loss_norm=token on every stream, and rl.latent_policy=mean at c = 2 (one
# "continue" decision per group, not c positions).


def _sample(model, builder, cfg, seed=2):
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(seed), "cpu")
    b = traj.batch
    assert b["rl_stopped"].any(-1).any() and b["rl_active"].any() and b["rl_token_mask"].any()
    return traj


def _recorded_update(model, traj, adv, cfg, ref=None):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = RecordingOptimizer(params)
    stats = grpo_update(model, opt, Accelerator(cpu=True), traj, adv, cfg, torch.Generator().manual_seed(0), ref)
    return params, opt.grads, stats


def _moved_copy(model, scale=0.002, seed=3):
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return ref.requires_grad_(False).eval()


def test_kl_penalty_gradient_by_hand(setup):
    """With zero advantages only the penalty moves the policy: the gradient is kl_coef times the gradient of the k3
    estimate exp(d) - d - 1 (d = ref - logp), averaged per row then over rows on every stream, and it points
    towards the start policy (one small step lowers the estimate)."""
    model, _, builder, _ = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=8", "rl.max_new_tokens=5", "rl.max_grad_norm=0",
                             "rl.kl_coef=0.5"])
    model = copy.deepcopy(model)
    traj = _sample(model, builder, cfg)
    b = traj.batch
    ref = _moved_copy(model)
    n = b["rl_z"].shape[0]
    params, grads, stats = _recorded_update(model, traj, torch.zeros(n), cfg, ref)
    assert len(grads) == 1  # one minibatch holds every row

    def k3_by_hand():
        new, old = model.score(b), ref.score(b)
        rows = []
        for i in range(n):
            per_stream = 0.0
            for key, mask in (("latent", b["rl_active"][i]), ("answer", b["rl_token_mask"][i])):
                d = old[key][i][mask] - new[key][i][mask]
                per_stream = per_stream + (torch.exp(d) - d - 1).sum() / max(int(mask.sum()), 1)
            if b["rl_stopped"][i].any():
                d = old["stop"][i] - new["stop"][i]
                per_stream = per_stream + torch.exp(d) - d - 1
            rows.append(per_stream)
        return torch.stack(rows).mean()

    kl = k3_by_hand()
    assert 1e-4 < float(kl.detach()) < 5 and stats["kl_to_start"] == pytest.approx(float(kl.detach()), rel=1e-4)  # d within clamp
    expect = torch.autograd.grad(0.5 * kl, params, allow_unused=True)
    for p, g, e in zip(params, grads[0], expect):
        torch.testing.assert_close(g, e if e is not None else torch.zeros_like(p), atol=1e-6, rtol=1e-3)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads[0]))
    with torch.no_grad():  # a small step along the recorded gradient moves the policy towards its start
        for p, g in zip(params, grads[0]):
            p.sub_(1e-3 * g / norm)
    with torch.no_grad():
        assert float(k3_by_hand()) < float(kl)


def test_kl_to_start_is_zero_before_the_first_update_under_bf16(setup, fresh_accelerate_state):
    """fp32 weights under mixed_precision bf16 (the paper setting): the start policy is scored under the same
    autocast as the policy, so before any update the penalty and train/kl_to_start are exactly 0."""
    model, _, builder, _ = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=8", "rl.max_new_tokens=5", "rl.kl_coef=0.1"])
    model = copy.deepcopy(model)
    ref = copy.deepcopy(model).requires_grad_(False).eval()
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    wrapped, opt = acc.prepare(model, opt)
    with acc.autocast():
        traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(2), "cpu")
    adv = torch.randn(traj.rewards.shape[0], generator=torch.Generator().manual_seed(0))
    stats = grpo_update(wrapped, opt, acc, traj, adv, cfg, torch.Generator().manual_seed(0), ref)
    assert stats["first_ratio_dev"] == 0.0
    assert stats["kl_to_start"] == 0.0


def _policy_gradient_by_hand(model, b, adv, idx, latent_mask, norm):
    """-(A-weighted log-probs) of one minibatch: per stream, the sum over its positions divided by the stream's
    positions in the minibatch (token) or each row's mean then the mean over rows (sequence)."""
    out = model.score({k: (v if v.dim() == 0 else v[idx]) for k, v in b.items()})
    a = adv[idx]
    streams = {"latent": (out["latent"], latent_mask[idx]), "answer": (out["answer"], b["rl_token_mask"][idx]),
               "stop": (out["stop"][:, None], b["rl_stopped"][idx].any(-1)[:, None])}
    total = 0.0
    for logp, mask in streams.values():
        weighted = -(a[:, None] * logp * mask)
        if norm == "token":
            total = total + weighted.sum() / max(int(mask.sum()), 1)
        else:
            total = total + (weighted.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return total


def test_token_norm_gradient_by_hand(setup):
    """rl.loss_norm=token: each minibatch's gradient is that of one mean over every position of each stream (long
    answers weigh more than short ones), on the answer stream as on the latent and stop streams."""
    model, _, builder, _ = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5", "rl.max_grad_norm=0",
                             "rl.loss_norm=token"])
    traj = _sample(model, builder, cfg)
    b = traj.batch
    n = b["rl_z"].shape[0]
    assert len(set(b["rl_token_mask"].sum(-1).tolist())) > 1  # answer lengths differ: token != sequence
    adv = torch.randn(n, generator=torch.Generator().manual_seed(0))
    params, grads, _ = _recorded_update(model, traj, adv, cfg)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    chunks = [perm[i: i + 3] for i in range(0, n, 3)]
    assert len(grads) == len(chunks)
    for idx, got in zip(chunks, grads):
        total = _policy_gradient_by_hand(model, b, adv, idx, b["rl_active"], "token")
        expect = torch.autograd.grad(total, params, allow_unused=True)
        for p, g, e in zip(params, got, expect):
            torch.testing.assert_close(g, e if e is not None else torch.zeros_like(p), atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_latent_mean_counts_one_continue_decision_per_group(setup, norm):
    """rl.latent_policy=mean at c = 2: the latent stream's actions are the "continue" decisions at group starts, so
    its mean runs over those positions only (the other latent of each group carries log-prob 0 and no action)."""
    model, _, builder, _ = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5", "rl.max_grad_norm=0",
                             "rl.latent_policy=mean", f"rl.loss_norm={norm}"])
    traj = _sample(model, builder, cfg)
    b = traj.batch
    n = b["rl_z"].shape[0]
    decisions = b["rl_active"] & b["rl_consulted"]
    assert decisions.any() and (b["rl_active"] & ~b["rl_consulted"]).any()  # c = 2: both kinds of latent
    adv = torch.randn(n, generator=torch.Generator().manual_seed(0))
    params, grads, stats = _recorded_update(model, traj, adv, cfg)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    chunks = [perm[i: i + 3] for i in range(0, n, 3)]
    for idx, got in zip(chunks, grads):
        total = _policy_gradient_by_hand(model, b, adv, idx, decisions, norm)
        expect = torch.autograd.grad(total, params, allow_unused=True)
        for p, g, e in zip(params, got, expect):
            torch.testing.assert_close(g, e if e is not None else torch.zeros_like(p), atol=1e-6, rtol=1e-3)
    # the logged latent loss at ratio 1: -A averaged over the rows with a decision (sequence norm)
    if norm == "sequence":
        rows = decisions.any(-1)
        expect = sum(-float((adv[idx] * rows[idx]).sum()) / len(idx) for idx in chunks) / len(chunks)
        assert stats["latent_loss"] == pytest.approx(expect, abs=1e-6)


def test_gaussian_policy_keeps_every_active_latent(setup):
    """The paper's policy scores a Gaussian density at every active latent: its latent stream still averages over
    all of them (the mean policy's mask is its own)."""
    model, _, builder, _ = setup
    cfg = load_config(None, ["rl.group_size=4", "rl.minibatch_size=3", "rl.max_new_tokens=5", "rl.max_grad_norm=0"])
    cfg = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, loss_norm="token"))
    traj = _sample(model, builder, cfg)
    b = traj.batch
    n = b["rl_z"].shape[0]
    adv = torch.randn(n, generator=torch.Generator().manual_seed(0))
    params, grads, _ = _recorded_update(model, traj, adv, cfg)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:3]
    expect = torch.autograd.grad(_policy_gradient_by_hand(model, b, adv, idx, b["rl_active"], "token"), params,
                                 allow_unused=True)
    for p, g, e in zip(params, grads[0], expect):
        torch.testing.assert_close(g, e if e is not None else torch.zeros_like(p), atol=1e-6, rtol=1e-3)
