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
