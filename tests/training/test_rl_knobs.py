"""The GRPO knobs for sparse rewards (rl.lr_schedule, warmup_steps, dynamic_sampling, loss_norm, kl_coef,
latent_logratio, latent_policy), each against a hand computation, and one short run with all of them on."""

import json
import math

import pytest
import torch

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import gaussian_log_density
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import (
    Trajectories,
    keep_signal_groups,
    kl_to_reference,
    masked_mean,
    rl_learning_rate,
)

PROBLEMS = [
    Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 pens and gets 2 more. How many pens?", steps=["2+2=4"], answer="4"),
]


def test_learning_rate_warmup_then_cosine_by_hand():
    cfg = load_config(None, ["rl.lr=0.001", "rl.warmup_steps=4", "rl.lr_schedule=cosine"])
    lrs = [rl_learning_rate(cfg, s, total=11) for s in range(11)]
    assert lrs[0] == pytest.approx(0.001 * 0.25 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))))
    assert lrs[5] == pytest.approx(0.001 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lrs[10] == pytest.approx(0.0001)  # 10% at the last step
    const = load_config(None, ["rl.lr=0.001"])
    assert {rl_learning_rate(const, s, 11) for s in range(11)} == {0.001}


def _traj(rewards: list[float]) -> Trajectories:
    n = len(rewards)
    batch = {"prefix_ids": torch.arange(n)[:, None], "end_id": torch.tensor(5)}
    return Trajectories(batch, {"answer": torch.arange(n, dtype=torch.float)[:, None]}, torch.tensor(rewards),
                        {"acc": torch.tensor(rewards)}, torch.zeros(n), 0.1)


def test_dynamic_sampling_keeps_signal_groups_first():
    # groups of 2: [1, 1] equal, [0, 1] signal, [0, 0] equal, [1, 0] signal
    traj = _traj([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    kept, share = keep_signal_groups(traj, group_size=2, n_keep=2)
    assert kept.batch["prefix_ids"].flatten().tolist() == [2, 3, 6, 7] and share == 1.0
    assert kept.rewards.tolist() == [0.0, 1.0, 1.0, 0.0] and kept.batch["end_id"].item() == 5
    kept, share = keep_signal_groups(traj, group_size=2, n_keep=3)  # not enough signal: fill with equal groups
    assert kept.batch["prefix_ids"].flatten().tolist() == [2, 3, 6, 7, 0, 1] and share == pytest.approx(2 / 3)


def test_loss_normalisation_by_hand():
    per = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(per, mask, "sequence").item() == pytest.approx(((1 + 3) / 2 + 2 / 1) / 2)
    assert masked_mean(per, mask, "token").item() == pytest.approx((1 + 3 + 2) / 3)
    one_d = masked_mean(torch.tensor([4.0, 9.0]), torch.tensor([1, 0]), "sequence")
    assert one_d.item() == pytest.approx(2.0)  # the stop stream: a row without a stop counts 0


def test_kl_to_reference_by_hand():
    logp = torch.tensor([[0.0, -1.0], [-2.0, 0.0]])
    ref = torch.tensor([[0.0, -0.5], [-1.0, 0.0]])
    mask = torch.ones(2, 2)
    k3 = [0.0, math.exp(0.5) - 0.5 - 1, math.exp(1.0) - 1.0 - 1, 0.0]
    assert kl_to_reference(logp, ref, mask, "token").item() == pytest.approx(sum(k3) / 4)
    assert kl_to_reference(logp, logp, mask).item() == 0.0


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A random ATP checkpoint and training data: enough to run the RL loop."""
    from atp_latent.data.formats import write_jsonl

    root = tmp_path_factory.mktemp("knobs")
    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    spec = ReasonerSpec.for_method("atp", latents_per_step=1, max_latent_stage=2)
    LatentReasoner(build_tiny_model("llama-tiny", tok), spec).save_pretrained(root / "start", tok)
    write_jsonl(root / "train.jsonl", PROBLEMS * 4)
    return root


def test_latent_logratio_mean_scores_the_per_dimension_mean(start):
    from atp_latent.data.sequences import builder_for
    from atp_latent.training.rl import rollout

    model, tok = LatentReasoner.from_pretrained(start / "start")
    model.eval()
    cfg = load_config(None, ["rl.group_size=2", "rl.max_new_tokens=3", "rl.latent_logratio=mean"])
    traj = rollout(model, builder_for(tok, model.spec), PROBLEMS, cfg, torch.Generator().manual_seed(0), "cpu")
    b = traj.batch
    assert b["rl_latent_scale"].item() == pytest.approx(1 / 128)
    with torch.no_grad():
        scored = model.score(b)
        state = model.fill(b["prefix_ids"], b["prefix_mask"], b["n_slots"], stop_mode="forced",
                           forced_active=b["rl_active"], forced_z=b["rl_z"])
    cont = b["rl_consulted"] & ~b["rl_stopped"]
    expect = gaussian_log_density(b["rl_z"], state.mu, state.logvar) / 128 + torch.where(
        cont, torch.log_softmax(state.stop_logits.float(), -1)[..., 0], torch.zeros(cont.shape))
    act = b["rl_active"]
    assert act.any()
    torch.testing.assert_close(scored["latent"][act], expect[act], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [3.0, 0.5])
def test_latent_temperature_widens_the_sampled_and_scored_gaussian(start, k):
    """rl.latent_temperature=k: with the same random draws the latents lie k times as far from mu, and both the
    rollout's log-prob and the re-scored one are the density of N(mu, (k sigma)^2), not N(mu, sigma^2); below 1
    (narrower exploration) as above."""
    from atp_latent.data.sequences import builder_for
    from atp_latent.training.rl import rollout

    model, tok = LatentReasoner.from_pretrained(start / "start")
    model.eval()
    builder = builder_for(tok, model.spec)
    base = ["rl.group_size=2", "rl.max_new_tokens=3"]
    t1 = rollout(model, builder, PROBLEMS, load_config(None, base), torch.Generator().manual_seed(0), "cpu")
    t3 = rollout(model, builder, PROBLEMS, load_config(None, [*base, f"rl.latent_temperature={k}"]),
                 torch.Generator().manual_seed(0), "cpu")
    b1, b3 = t1.batch, t3.batch
    assert "rl_latent_temperature" not in b1 and b3["rl_latent_temperature"].item() == k
    with torch.no_grad():
        state = model.fill(b3["prefix_ids"], b3["prefix_mask"], b3["n_slots"], stop_mode="forced",
                           forced_active=b3["rl_active"], forced_z=b3["rl_z"])
        scored = model.score(b3)
    # the first slot sees the same prefix in both rollouts, so its draw is the same eps, scaled by 3
    torch.testing.assert_close(b3["rl_z"][:, 0] - state.mu[:, 0], k * (b1["rl_z"][:, 0] - state.mu[:, 0]),
                               atol=1e-5, rtol=1e-4)
    sigma = torch.exp(0.5 * state.logvar.float())
    eps = (b3["rl_z"].float() - state.mu.float()) / (k * sigma)
    by_hand = (-torch.log(k * sigma) - 0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    act = b3["rl_active"]
    assert act.any()
    torch.testing.assert_close(t3.rollout_logps["latent_gaussian"][act], by_hand[act], atol=1e-3, rtol=1e-5)
    cont = b3["rl_consulted"] & ~b3["rl_stopped"]
    stop_cont = torch.where(cont, torch.log_softmax(state.stop_logits.float(), -1)[..., 0], torch.zeros(cont.shape))
    torch.testing.assert_close(scored["latent"][act], (by_hand + stop_cont)[act], atol=1e-3, rtol=1e-5)
    with pytest.raises(ValueError, match="latent_temperature"):
        load_config(None, ["rl.latent_temperature=0"])


def test_latent_policy_mean_rolls_out_mu_and_scores_no_gaussian_term(start):
    """rl.latent_policy=mean: the rollout's latents are mu itself (the same draws give the greedy latents), the
    latent stream holds only the stop head's "continue" log-probs, and no gradient reaches the latent head (its
    latents are inputs, not actions), while the language model still learns from the answer and stop streams."""
    from atp_latent.data.sequences import builder_for
    from atp_latent.training.rl import rollout

    model, tok = LatentReasoner.from_pretrained(start / "start")
    model.eval()
    builder = builder_for(tok, model.spec)
    cfg = load_config(None, ["rl.group_size=3", "rl.max_new_tokens=3", "rl.latent_policy=mean"])
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(0), "cpu")
    b = traj.batch
    state = model.fill(b["prefix_ids"], b["prefix_mask"], b["n_slots"], stop_mode="forced",
                       forced_active=b["rl_active"], forced_z=b["rl_z"])
    act = b["rl_active"]
    assert act.any() and b["rl_latent_scale"].item() == 0.0
    torch.testing.assert_close(b["rl_z"][act], state.mu[act].detach(), atol=1e-5, rtol=1e-5)  # z = mu exactly
    assert torch.equal(traj.rollout_logps["latent_gaussian"], torch.zeros_like(act, dtype=torch.float))
    scored = model.score(b)
    cont = b["rl_consulted"] & ~b["rl_stopped"]
    stop_cont = torch.where(cont, torch.log_softmax(state.stop_logits.float(), -1)[..., 0], torch.zeros(cont.shape))
    torch.testing.assert_close(scored["latent"], (stop_cont * act).detach(), atol=1e-5, rtol=1e-5)
    model.zero_grad()
    (scored["latent"].sum() + scored["stop"].sum() + scored["answer"].sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in model.latent_head.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.lm.parameters())
    # the paper's policy on the same draws: sampled latents, a Gaussian term, a gradient into the latent head
    paper = rollout(model, builder, PROBLEMS, load_config(None, ["rl.group_size=3", "rl.max_new_tokens=3"]),
                    torch.Generator().manual_seed(0), "cpu")
    assert "rl_latent_scale" not in paper.batch and not torch.equal(paper.batch["rl_z"], b["rl_z"])
    model.zero_grad()
    model.score(paper.batch)["latent"].sum().backward()
    assert any(p.grad is not None and p.grad.any() for p in model.latent_head.parameters())
    for knob in ("rl.latent_temperature=3", "rl.latent_logratio=mean"):  # knobs of the Gaussian term it has not
        with pytest.raises(ValueError, match="latent_policy=gaussian only"):
            load_config(None, ["rl.latent_policy=mean", knob])


def test_train_lm_false_moves_only_the_heads(start):
    """rl.train_lm=false: after RL steps at a large learning rate every LM weight equals the start's, the latent
    head's do not."""
    from atp_latent.training.rl import train_rl

    sets = [f"data.train={start / 'train.jsonl'}", "data.val=null", "method.name=atp-rl",
            f"model.init_from={start / 'start'}", "rl.questions_per_step=2", "rl.group_size=2",
            "rl.minibatch_size=2", "rl.steps=2", "rl.max_new_tokens=3", "rl.lr=0.01", "rl.train_lm=false",
            f"output_dir={start}", "name=heads_only"]
    run = train_rl(load_config(None, sets))
    before, _ = LatentReasoner.from_pretrained(start / "start")
    after, _ = LatentReasoner.from_pretrained(run / "final")
    lm0, lm1 = before.lm.state_dict(), after.lm.state_dict()
    assert all(torch.equal(lm0[k], lm1[k]) for k in lm0)
    h0, h1 = before.latent_head.state_dict(), after.latent_head.state_dict()
    assert any(not torch.equal(h0[k], h1[k]) for k in h0)


def test_all_knobs_on_run_and_log(start):
    from atp_latent.training.rl import train_rl

    sets = [f"data.train={start / 'train.jsonl'}", "data.val=null", "method.name=atp-rl",
            f"model.init_from={start / 'start'}", "rl.questions_per_step=2", "rl.group_size=2",
            "rl.minibatch_size=2", "rl.steps=3", "rl.max_new_tokens=3", "rl.lr=0.001", "rl.lr_schedule=cosine",
            "rl.warmup_steps=2", "rl.dynamic_sampling=true", "rl.oversample=2", "rl.loss_norm=token",
            "rl.kl_coef=0.1", "rl.latent_logratio=mean", f"output_dir={start}", "name=knobs"]
    run = train_rl(load_config(None, sets))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/loss" in r]
    assert len(steps) == 3
    cfg = load_config(None, sets)
    assert [r["train/lr"] for r in steps] == pytest.approx([rl_learning_rate(cfg, s, 3) for s in range(3)])
    assert all("train/kl_to_start" in r and r["train/kl_to_start"] >= 0 for r in steps)
    assert all(0.0 <= r["train/signal_groups"] <= 1.0 and "train/sampled_reward" in r for r in steps)
    # KL to the start policy is 0 before the first update and grows once the policy has moved
    assert steps[0]["train/kl_to_start"] == pytest.approx(0.0, abs=1e-6) and steps[-1]["train/kl_to_start"] > 0
