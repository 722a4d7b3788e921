"""iCoT in the harness: which chain tokens remain in a record's sequence, the removal schedule and optimizer resets
as the SFT loop runs them, best/ among fully internalized epochs, and a resume that continues exactly."""

import json
import math
from types import SimpleNamespace

import pytest

from atp_latent.config import load_config
from atp_latent.data.formats import write_jsonl
from atp_latent.data.internalize import ALL
from atp_latent.data.records import Problem
from atp_latent.data.sequences import Curriculum, SequenceBuilder
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training import sft

# every chain is "<<a+b=c>>\n": 10 word-tokenizer tokens (< < a + b = c > > \n), c a single digit
PROBLEMS = [Problem(question=f"Ann has {a} cats and gets {b} more. How many cats?", steps=[f"{a}+{b}={a + b}"],
                    answer=str(a + b)) for a in range(1, 5) for b in range(1, 5) if a + b < 10]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer([p.question for p in PROBLEMS] + ["<<1+2=3>>\n### 3"])


def test_sequence_keeps_the_chain_after_its_first_k_tokens(tok):
    cot = SequenceBuilder(tok, "cot", Curriculum())
    icot = SequenceBuilder(tok, "icot", Curriculum())
    p = Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7")
    words = lambda ids: tok.convert_ids_to_tokens(ids)  # noqa: E731
    assert words(icot.chain_ids(p)) == ["<", "<", "3", "+", "4", "=", "7", ">", ">", "\n"]
    full = icot.build(p, 0)
    assert full.suffix == cot.build(p, 0).suffix and full.labels == cot.build(p, 0).labels and full.chain_left == 10
    e = icot.build(p, 4)  # "< < 3 +" gone
    assert words(e.suffix) == ["<|end-latent|>", "4", "=", "7", ">", ">", "\n", "#", "#", "#", "▁", "7", tok.eos_token]
    assert e.labels[0] == -100 and e.labels[1:] == e.suffix[1:] and e.chain_left == 6
    assert e.n_slots == 0 and e.prefix == cot.build(p, 0).prefix and icot.eval_prompt(p.question)[1] == 0
    for k in (10, 25, ALL):  # the whole chain: the answer alone, as No-CoT writes it
        gone = icot.build(p, k)
        assert gone.suffix == SequenceBuilder(tok, "nocot", Curriculum()).build(p, 0).suffix and gone.chain_left == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("icot")
    write_jsonl(root / "train.jsonl", (PROBLEMS * 4)[:64])  # 8 batches of 8 an epoch
    write_jsonl(root / "val.jsonl", PROBLEMS[:4])
    return root


def _sets(root, name, **over):
    sets = {"data.train": root / "train.jsonl", "data.val": "null", "method.name": "icot", "optim.batch_size": 8,
            "optim.lr": 0.003, "optim.reset_each_epoch": "false", "train.epochs": 3, "train.log_every": 1, "train.threads": 1, "data.length_buckets": 1,
            "curriculum.remove_per_epoch": 4, "curriculum.remove_all_beyond": "null",
            "curriculum.removal_lambda": math.inf, "train.report_to": "[]", "output_dir": root, "name": name} | over
    return [f"{k}={v}" for k, v in sets.items()]


def test_loop_removes_tokens_on_schedule_and_resets_the_optimizer(data, monkeypatch):
    """8 batches an epoch at 4 tokens an epoch: one more token every 2 batches (s = b // 2), no offsets. AdamW is
    cleared each time s grows, except once the previous batch had lost its whole 10-token chain (s >= 10 from
    batch 20): resets at batches 2, 4, ..., 20, none at 22."""
    events = []
    real_build, real_reset = SequenceBuilder.build_internalized, sft.reset_optimizer
    monkeypatch.setattr(SequenceBuilder, "build_internalized",
                        lambda self, p, k: events.append(("build", k)) or real_build(self, p, k))
    monkeypatch.setattr(sft, "reset_optimizer", lambda opt: events.append(("reset", None)) or real_reset(opt))
    run = sft.train(load_config(None, _sets(data, "schedule")))
    ks, resets = [], []
    for kind, k in events:
        if kind == "build":
            ks.append(k)
        else:
            resets.append(len(ks) // 8)  # the batch about to be built
    per_batch = [ks[i: i + 8] for i in range(0, len(ks), 8)]
    assert len(per_batch) == 24 and all(len(set(b)) == 1 for b in per_batch)
    assert [b[0] for b in per_batch] == [b // 2 for b in range(24)]
    assert resets == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    left = [r["train/chain_tokens_left"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "train/chain_tokens_left" in r]
    assert left[:3] == [10, 10, 9] and left[-1] == 0


def test_best_is_kept_among_fully_internalized_epochs(data, monkeypatch):
    """Epochs 0-2 still write part of the chain (s < 10 in some batch), epoch 3 does not: best/ follows every epoch
    until the chain is gone (upstream resets its best accuracy), then only a higher val accuracy replaces it."""
    accs = iter([0.5, 0.4, 0.3, 0.2])
    monkeypatch.setattr(sft, "validate", lambda *a, **k: (SimpleNamespace(accuracy=next(accs)), []))
    saved = []
    real = sft.save_checkpoint
    monkeypatch.setattr(sft, "save_checkpoint",
                        lambda path, *a, **k: saved.append((path.name, a[4]["epoch"])) or real(path, *a, **k))
    sft.train(load_config(None, _sets(data, "best", **{"train.epochs": 4, "data.val": data / "val.jsonl"})))
    assert [epoch for name, epoch in saved if name == "best"] == [1, 2, 3]  # epoch 3's 0.3; not epoch 4's 0.2


def test_resume_continues_the_schedule_exactly(data):
    """Killed after epoch 1's checkpoint and resumed, with smoothing offsets drawn: the loss curve is the
    uninterrupted run's (the offsets are drawn from the epoch's seeded stream, the reset flag is in the
    checkpoint)."""
    over = {"curriculum.removal_lambda": 1.0, "train.epochs": 3}
    full = sft.train(load_config(None, _sets(data, "full", **over)))

    class Killed(Exception):
        pass

    real = sft.save_checkpoint

    def save(path, *a, **k):
        real(path, *a, **k)
        if path.name == "step-00000008":
            raise Killed

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sft, "save_checkpoint", save)
        with pytest.raises(Killed):
            sft.train(load_config(None, _sets(data, "cut", **over)))
    resumed = sft.train(load_config(None, _sets(data, "cut", **over)), resume=True)

    def losses(run):
        return [r["train/loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "train/loss" in r]

    assert len(losses(full)) == 24 and losses(resumed) == losses(full)
