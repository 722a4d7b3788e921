"""The RL loop's bookkeeping: which questions each process rolls out (dynamic sampling included), how many steps
one epoch is, the sampled-token count, the coherence judge's frozen text table, and the last validation of a run
cut by train.max_minutes."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atp_latent.config import load_config
from atp_latent.data.formats import write_jsonl
from atp_latent.data.records import Problem
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training import rl
from atp_latent.training.rl import rl_total_steps, rollout_questions

QUESTIONS = [Problem(question=f"Ann has {a} cats and gets {b} more. How many cats?", steps=[f"{a}+{b}={a + b}"],
                     answer=str(a + b)) for a in range(1, 5) for b in range(1, 5)]  # 16 distinct questions


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A random c = 2 ATP checkpoint with a step decoder, 16 training and 4 validation questions."""
    root = tmp_path_factory.mktemp("rl_loop")
    tok = build_word_tokenizer([p.question for p in QUESTIONS] + ["<<3+4=7>>\n### 7"])
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=2)
    LatentReasoner(build_tiny_model("llama-tiny", tok, seed=1), spec).save_pretrained(root / "start", tok)
    write_jsonl(root / "train.jsonl", QUESTIONS)
    write_jsonl(root / "val.jsonl", QUESTIONS[:4])
    return root


def _sets(root, name, **over):
    sets = {"data.train": root / "train.jsonl", "data.val": "null", "method.name": "atp-rl",
            "model.init_from": root / "start", "rl.questions_per_step": 2, "rl.group_size": 2,
            "rl.minibatch_size": 4, "rl.max_new_tokens": 3, "rl.coherence_max_tokens": 3, "rl.lr": 1e-3,
            "train.threads": 1, "train.report_to": "[]", "output_dir": root, "name": name} | over
    return [f"{k}={v}" for k, v in sets.items()]


def _metrics(run):
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_rollout_questions_by_hand():
    order = [7, 2, 9, 0, 5, 1, 8, 3, 6, 4]
    assert rollout_questions(order, 0, 0, 3) == [7, 2, 9]
    assert rollout_questions(order, 0, 1, 3) == [0, 5, 1]
    assert rollout_questions(order, 6, 1, 3) == [4, 7, 2]  # wraps around the order
    # one cursor advance of world x n_q per step: over an epoch every question once, on exactly one process
    seen = [q for step in range(5) for rank in range(2) for q in rollout_questions(order, step * 2 % 10, rank, 1)]
    assert sorted(seen) == sorted(order)


def test_one_epoch_counts_the_oversampled_questions():
    cfg = load_config(None, ["rl.questions_per_step=2", "rl.dynamic_sampling=true", "rl.oversample=4"])
    assert rl_total_steps(cfg, 64, world=2) == 64 // (2 * 4 * 2)
    plain = load_config(None, ["rl.questions_per_step=2"])
    assert rl_total_steps(plain, 64, world=2) == 16
    assert rl_total_steps(load_config(None, ["rl.steps=5", "rl.dynamic_sampling=true"]), 64, 2) == 5


def test_two_processes_roll_out_their_own_slices_under_dynamic_sampling(start, tmp_path):
    """2 processes x (2 questions x oversample 2), rl.steps unset: one epoch of the 16 questions is 2 steps; at each
    step process r rolls out the r-th slice of 4 consecutive questions of the shared shuffled order, so the two
    processes' questions are disjoint and the epoch covers every question once. train/sampled_tokens counts every
    trajectory rolled out (before dynamic sampling keeps half), averaged over the processes."""
    script = Path(__file__).with_name("recorded_questions.py")
    name = "dyn2p"
    args = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            "29591", str(script), str(tmp_path),
            *_sets(start, name, **{"rl.dynamic_sampling": "true", "rl.oversample": 2, "train.seed": 3})]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    order = list(range(16))
    random.Random(3).shuffle(order)  # the shared order train_rl draws from train.seed
    by_rank = [[json.loads(line) for line in (tmp_path / f"rollouts-rank{r}.jsonl").read_text().splitlines()]
               for r in range(2)]
    assert [len(calls) for calls in by_rank] == [2, 2]  # one epoch: 16 // (2 x 2 x 2) steps
    every = []
    for step in range(2):
        for rank in range(2):
            want = [QUESTIONS[order[(step * 8 + rank * 4 + i) % 16]].question for i in range(4)]
            assert by_rank[rank][step]["questions"] == want, (step, rank)
            every += want
    assert sorted(every) == sorted(p.question for p in QUESTIONS)
    steps = [r for r in _metrics(start / name) if "train/sampled_tokens" in r]
    for step, row in enumerate(steps):
        assert row["train/sampled_tokens"] == pytest.approx(sum(c[step]["sampled"] for c in by_rank) / 2)
        # a mean of the processes' rates: near their mean count over their mean time (the old count was half)
        assert row["train/sampled_tokens_per_s"] == pytest.approx(row["train/sampled_tokens"]
                                                                  / row["train/step_seconds"], rel=0.2)
        assert 0 <= row["train/plan_decode_seconds"] <= row["train/step_seconds"]
        split = row["train/rollout_seconds"] + row["train/update_seconds"]
        assert row["train/plan_decode_seconds"] <= row["train/rollout_seconds"] and 0 < row["train/update_seconds"]
        assert row["train/step_seconds"] * 0.8 <= split <= row["train/step_seconds"]  # advantages, lr: the rest
        assert 0 <= row["train/plan_decode_share"] <= 1


def test_coherence_is_judged_through_the_start_table(start, monkeypatch):
    """RL trains the base model's input table, while the step decoder reads its own tokens through the table it
    was trained with: every rollout gets a frozen snapshot equal to the start checkpoint's table."""
    real, seen = rl.rollout, []

    def recording(model, builder, problems, cfg, generator, device, text_embed=None):
        seen.append((text_embed.weight.detach().clone(), text_embed.weight.requires_grad,
                     model.lm.get_input_embeddings().weight.detach().clone()))
        return real(model, builder, problems, cfg, generator, device, text_embed)

    monkeypatch.setattr(rl, "rollout", recording)
    cfg = load_config(None, _sets(start, "coh_table", **{"rl.steps": 3, "rl.lr": 1e-2, "rl.w_coh": 1.0}))
    run = rl.train_rl(cfg)
    table0 = LatentReasoner.from_pretrained(start / "start")[0].lm.get_input_embeddings().weight
    assert len(seen) == 3
    for snapshot, trainable, _ in seen:
        assert torch.equal(snapshot, table0) and not trainable
    assert not torch.equal(seen[-1][2], table0)  # the policy's own table did move
    final, _ = LatentReasoner.from_pretrained(run / "final")
    assert not torch.equal(final.lm.get_input_embeddings().weight, table0)


def test_run_cut_by_max_minutes_validates_its_last_step(start):
    """train.max_minutes ends the run after its first step: that step is validated (as SFT validates before it
    stops) and checkpointed, though rl.val_every is far away."""
    cfg = load_config(None, _sets(start, "cut", **{"rl.steps": 50, "rl.val_every": 100, "rl.checkpoint_every": 100,
                                                   "data.val": start / "val.jsonl", "train.max_minutes": 1e-6}))
    run = rl.train_rl(cfg)
    rows = _metrics(run)
    assert max(r["step"] for r in rows) == 1
    assert [r["step"] for r in rows if "eval/val_accuracy" in r] == [0, 1]
    assert any(r.get("train/scheduled_steps") == 50 for r in rows)
    assert (run / "checkpoints" / "step-00000001" / "COMPLETE").is_file()


def test_fp16_overflow_skips_the_minibatch_and_rl_goes_on(start, monkeypatch, fp16_on_cpu):
    """Under fp16 loss scaling the first update's gradient overflows (a NaN in the embeddings' gradient, as an
    overflow leaves it after unscaling): the scaler skips that step and halves its scale, and RL goes on."""
    real, calls = LatentReasoner.forward, {"n": 0}

    def forward(self, batch):
        out = real(self, batch)
        if torch.is_grad_enabled():  # the update's scoring, not the old log-probs
            calls["n"] += 1
            if calls["n"] == 1:
                w = self.lm.get_input_embeddings().weight
                out["answer"] = out["answer"] + torch.sqrt((w * 0.0).sum())
        return out

    monkeypatch.setattr(LatentReasoner, "forward", forward)
    # a random model earns equal rewards: advantages of its own, so that each update has a gradient
    monkeypatch.setattr(rl, "group_advantages", lambda rewards, g: torch.linspace(-1, 1, rewards.shape[0]))
    cfg = load_config(None, _sets(start, "fp16", **{"rl.steps": 8, "rl.minibatch_size": 8,
                                                    "train.mixed_precision": "fp16"}))
    run = rl.train_rl(cfg)
    steps = [r for r in _metrics(run) if "train/loss" in r]
    assert len(steps) == 8 and steps[0]["train/skipped_minibatches"] == 1 and "train/grad_norm" not in steps[0]
    scale = 2.0**16
    for r in steps:  # each skipped step halves the scale (its growth interval is far away)
        scale /= 2 ** r["train/skipped_minibatches"]
        assert r["train/loss_scale"] == scale
        assert ("train/grad_norm" in r) == (r["train/skipped_minibatches"] == 0)
    assert any(r["train/skipped_minibatches"] == 0 for r in steps)  # and later steps updated the weights
    model, _ = LatentReasoner.from_pretrained(run / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_rl_resume_refuses_a_changed_step_budget(start):
    cfg = load_config(None, _sets(start, "budget", **{"rl.steps": 2, "rl.checkpoint_every": 1}))
    run = rl.train_rl(cfg)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"step-00000002: --resume with a changed budget \(rl.steps 2 -> 4, "
                                         r"scheduled_steps 2 -> 4\)"):
        rl.train_rl(load_config(None, _sets(start, "budget", **{"rl.steps": 4, "rl.checkpoint_every": 1})),
                    resume=True)
    assert (run / "metrics.jsonl").read_text() == before  # refused before anything was written


RESUME_SCRIPT = '''
import sys
from atp_latent.config import load_config
from atp_latent.training import rl
real = rl.rollout


def rollout(*args, **kwargs):  # a reward of the sampled answer tokens: every group has a signal
    traj = real(*args, **kwargs)
    tokens = traj.batch["rl_tokens"].cpu()
    traj.rewards = ((tokens[:, 0] * 7 + tokens[:, 1]) % 5).float() / 4
    return traj


rl.rollout = rollout
resume = sys.argv[1] == "resume"
rl.train_rl(load_config(None, sys.argv[2:]), resume=resume)
'''


def _launch(script, port, *args):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_two_process_rl_resume_continues_every_process_stream(start, tmp_path):
    """2 processes: a run cut after step 1 (train.max_minutes) and resumed ends with the weights of the run that was
    not cut. Each process rolls out with its own generator, so each must resume its own stream (before, process 1
    restarted from a fresh seed)."""
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    over = {"rl.steps": 3, "rl.checkpoint_every": 100, "rl.lr": 1e-2}
    for name, mode, extra, port in (("full", "fresh", {}, 29592), ("cut", "fresh", {"train.max_minutes": 1e-6}, 29594),
                                    ("cut", "resume", {}, 29596)):
        proc = _launch(script, port, mode, *_sets(start, f"resume2p_{name}", **over, **extra))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cut = start / "resume2p_cut"
    assert (cut / "checkpoints" / "step-00000001").is_dir()
    a, _ = LatentReasoner.from_pretrained(start / "resume2p_full" / "final")
    b, _ = LatentReasoner.from_pretrained(cut / "final")
    moved = False
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name, rtol=0, atol=0)
    start_model, _ = LatentReasoner.from_pretrained(start / "start")
    moved = any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), start_model.state_dict().values()))
    assert moved


NAN_SCRIPT = '''
import os, sys
import torch
from atp_latent.config import load_config
from atp_latent.training import rl

rank = os.environ["RANK"]
if rank == "1":  # only this process's advantages, and so its loss, turn NaN at the first step
    real = rl.group_advantages
    rl.group_advantages = lambda rewards, g: real(rewards, g) * float("nan")
try:
    rl.train_rl(load_config(None, sys.argv[2:]))
except FloatingPointError as e:
    open(os.path.join(sys.argv[1], "stopped-" + rank), "w").write(str(e))
'''


def test_nonfinite_rl_loss_on_one_process_stops_every_process(start, tmp_path):
    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    proc = _launch(script, 29598, str(tmp_path), *_sets(start, "nan2p", **{"rl.steps": 2}))
    stopped = {p.name: p.read_text() for p in tmp_path.glob("stopped-*")}
    assert sorted(stopped) == ["stopped-0", "stopped-1"], proc.stdout[-2000:] + proc.stderr[-3000:]
    assert stopped["stopped-1"].startswith("non-finite RL loss") and stopped["stopped-1"].endswith("on process 1")
    assert stopped["stopped-0"].startswith("non-finite loss on process 1 ")
