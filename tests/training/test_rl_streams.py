"""What each GRPO term adds to the gradient, by hand: the KL penalty to the start policy (its sign, and 0 before the
first update under bf16 autocast), rl.loss_norm=token on every stream, and rl.latent_policy=mean at c = 2 (one
"continue" decision per group, not c positions)."""

import copy
import dataclasses

import pytest
import torch
from accelerate import Accelerator

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import builder_for
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import grpo_update, rollout

PROBLEMS = [
    Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 pens and gets 2 more. How many pens?", steps=["2+2=4"], answer="4"),
]


@pytest.fixture(scope="module")
def policy():
    """A random c = 2 ATP model whose stop head sometimes stops, so every stream has positions."""
    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=3)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok), spec).eval()
    with torch.no_grad():
        model.stop_head.mlp[2].bias.copy_(torch.tensor([0.0, -0.2]))
    return model, builder_for(tok, spec)


class RecordingOptimizer:
    """Records each step's gradients and leaves the parameters alone (every minibatch sees the rollout policy)."""

    def __init__(self, params):
        self.params = list(params)
        self.param_groups = [{"params": self.params, "lr": 0.0}]
        self.grads = []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in self.params])


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


def test_kl_penalty_gradient_by_hand(policy):
    """With zero advantages only the penalty moves the policy: the gradient is kl_coef times the gradient of the k3
    estimate exp(d) - d - 1 (d = ref - logp), averaged per row then over rows on every stream, and it points
    towards the start policy (one small step lowers the estimate)."""
    model, builder = policy
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


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_kl_to_start_is_zero_before_the_first_update_under_bf16(policy, fresh_accelerate_state):
    """fp32 weights under mixed_precision bf16 (the paper setting): the start policy is scored under the same
    autocast as the policy, so before any update the penalty and train/kl_to_start are exactly 0."""
    model, builder = policy
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


def test_token_norm_gradient_by_hand(policy):
    """rl.loss_norm=token: each minibatch's gradient is that of one mean over every position of each stream (long
    answers weigh more than short ones), on the answer stream as on the latent and stop streams."""
    model, builder = policy
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
def test_latent_mean_counts_one_continue_decision_per_group(policy, norm):
    """rl.latent_policy=mean at c = 2: the latent stream's actions are the "continue" decisions at group starts, so
    its mean runs over those positions only (the other latent of each group carries log-prob 0 and no action)."""
    model, builder = policy
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


def test_gaussian_policy_keeps_every_active_latent(policy):
    """The paper's policy scores a Gaussian density at every active latent: its latent stream still averages over
    all of them (the mean policy's mask is its own)."""
    model, builder = policy
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
