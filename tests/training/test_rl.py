"""GRPO on the latent policy: rollout log-probs, the first ratio, the clipped surrogate, and multi-process sync."""

import json
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import builder_for
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import _select, clipped_surrogate, grpo_update, rollout

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


def test_first_update_ratio_is_exactly_one(setup):
    model, tok, builder, cfg = setup
    model = LatentReasoner(model.lm, model.spec, decoder=model.decoder)  # fresh heads; same LM
    model.eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(2), "cpu")
    adv = torch.randn(traj.rewards.shape[0], generator=torch.Generator().manual_seed(0))
    stats = grpo_update(model, opt, Accelerator(cpu=True), traj, adv, cfg, torch.Generator().manual_seed(0))
    assert stats["first_ratio_dev"] == 0.0
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


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny addition task and an ATP SFT checkpoint that gets part of it right."""
    import random

    from atp_latent.data.formats import write_jsonl
    from atp_latent.training.sft import train

    root = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)

    def rec():
        a, b = rng.randint(1, 4), rng.randint(1, 4)
        return Problem(question=f"Ann has {a} cats and gets {b} more. How many cats?", steps=[f"{a}+{b}={a + b}"],
                       answer=str(a + b))

    write_jsonl(root / "train.jsonl", [rec() for _ in range(256)])
    write_jsonl(root / "val.jsonl", [rec() for _ in range(16)])
    sets = [f"data.train={root / 'train.jsonl'}", f"data.val={root / 'val.jsonl'}", "method.name=atp",
            "method.latents_per_step=1", "curriculum.max_latent_stage=1", "curriculum.stage_offset=2",
            "optim.lr=0.003", "optim.batch_size=32", "train.epochs=5", "data.max_val=16", f"output_dir={root}",
            "name=sft"]
    train(load_config(None, sets))
    return root


def _rl_sets(root, name, **over):
    sets = {"data.train": root / "train.jsonl", "data.val": root / "val.jsonl", "data.max_val": 8,
            "method.name": "atp-rl", "model.init_from": root / "sft", "rl.questions_per_step": 4,
            "rl.group_size": 4, "rl.minibatch_size": 8, "rl.steps": 2, "rl.lr": 5e-4, "rl.val_every": 100,
            "train.threads": 1, "output_dir": root, "name": name} | over
    return [f"{k}={v}" for k, v in sets.items()]


def test_two_process_rl_ends_in_sync(toy):
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--num-processes", "2", "--port", "29561"]
    for s in _rl_sets(toy, "rl2p"):
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (toy / "rl2p" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("train/processes") == 2 and r.get("train/replicas_in_sync") == 1 for r in rows)
    assert any(r.get("train/grad_norm", 0) > 0 for r in rows)  # the sync check compared updated weights
    diag = {"train/reward_accuracy", "train/reward_format", "train/reward_coherence", "train/equal_reward_groups",
            "train/active_latents", "train/sigma", "train/clip_frac_latent", "train/approx_kl_answer",
            "train/grad_norm", "train/latents_used/hist"}
    assert diag <= set().union(*rows)


def test_micro_rl_run_raises_mean_reward(toy):
    from atp_latent.training.rl import train_rl

    over = {"rl.questions_per_step": 16, "rl.group_size": 8, "rl.minibatch_size": 32, "rl.steps": 30}
    run = train_rl(load_config(None, _rl_sets(toy, "rl_micro", **over)))
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


def test_bf16_first_ratio_is_exactly_one(setup, fresh_accelerate_state):
    """Under mixed_precision bf16, old and new log-probs come from the same autocast module call: ratio 1."""
    model, tok, builder, cfg = setup
    model = LatentReasoner(model.lm, model.spec, decoder=model.decoder)
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    wrapped, opt = acc.prepare(model, opt)
    wrapped.eval()
    with acc.autocast():
        traj = rollout(model, builder, PROBLEMS, cfg, torch.Generator().manual_seed(2), "cpu")
    adv = torch.randn(traj.rewards.shape[0], generator=torch.Generator().manual_seed(0))
    stats = grpo_update(wrapped, opt, acc, traj, adv, cfg, torch.Generator().manual_seed(0))
    assert stats["first_ratio_dev"] == 0.0 and stats["grad_norm"] > 0


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

    wrapped = Wrapper(LatentReasoner(model.lm, model.spec, decoder=model.decoder).eval())
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
