"""The SFT loop end to end on a tiny synthetic set: it learns, writes its run directory, and resumes exactly."""

import json

import pytest
import torch

from atp_latent.config import RunConfig, load_config
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.training.sft import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    write_benchmark(out, SynthConfig(seed=3, n_train=96, n_val=16, n_test=16, n_ood=16))
    return out


def config(data, tmp, method="cot", **over) -> RunConfig:
    return load_config(None, config_sets(data, tmp, method, **over))


def config_sets(data, tmp, method="cot", **over) -> list[str]:
    sets = [f"data.train={data / 'train.jsonl'}", f"data.val={data / 'val.jsonl'}", f"method.name={method}",
            "optim.lr=0.003", "optim.batch_size=16", "train.epochs=3", "train.log_every=1", "eval.batch_size=16",
            "eval.cot_max_new_tokens=40", "data.max_val=8", "curriculum.max_latent_stage=2",
            "curriculum.epochs_per_stage=1", "method.latents_per_step=1", f"output_dir={tmp}"]
    return sets + [f"{k}={v}" for k, v in over.items()]


def losses(run):
    return [json.loads(line)["train/loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in line]


def test_micro_cot_run_lowers_loss_and_writes_run_dir(data, tmp_path):
    run = train(config(data, tmp_path, name="cot"))
    ls = losses(run)
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.5
    for f in ("config.yaml", "environment.json", "metrics.jsonl", "final/reasoner.json", "best/model/reasoner.json"):
        assert (run / f).exists(), f
    assert list((run / "tb").iterdir())
    model, _ = LatentReasoner.from_pretrained(run / "final")  # loads back with one call
    assert model.spec.method == "cot"
    saved = load_config(str(run / "config.yaml"))
    assert saved.method.name == "cot" and saved.optim.lr == 0.003


def test_resumed_run_ends_like_uninterrupted_run(data, tmp_path, kill_after_checkpoint):
    full = train(config(data, tmp_path, name="full"))
    # killed mid-epoch 1 (6 batches/epoch): train.checkpoint_every may change on resume, the budget may not
    kill_after_checkpoint(config(data, tmp_path, name="cut", **{"train.checkpoint_every": 4}), 8)
    resumed = train(config(data, tmp_path, name="cut"), resume=True)
    a, _ = LatentReasoner.from_pretrained(full / "final")
    b, _ = LatentReasoner.from_pretrained(resumed / "final")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    def curve(run):
        return [(r["step"], r["train/loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "train/loss" in r]

    assert curve(resumed) == curve(full) and [s for s, _ in curve(full)] == list(range(1, 19))


def test_resume_forgets_the_metrics_of_steps_it_redoes(data, tmp_path):
    """A resumed run redoes every step after its checkpoint, all of them when it was killed before its first one;
    their old records must not stay beside the new ones (curves would draw both)."""
    from atp_latent.training.runs import RunDir
    from atp_latent.training.sft import open_run_dir

    cfg = config(data, tmp_path, name="r", **{"train.report_to": "[]"})
    for ckpt, kept in ((tmp_path / "r" / "checkpoints" / "step-00000002", [0, 1, 2]), (None, [])):
        with RunDir.create(tmp_path, "r", resume=True, tensorboard=False) as run:
            for step in range(4):
                run.log({"train/loss": 1.0}, step)
        opened = open_run_dir(tmp_path / "r", cfg, resume=True, ckpt=ckpt)
        assert [r["step"] for r in opened.read_metrics()] == kept
        opened.close()
        (tmp_path / "r" / "metrics.jsonl").unlink()


def test_micro_atp_run_from_cot_checkpoint(data, tmp_path):
    cot = train(config(data, tmp_path, name="cot0", **{"train.epochs": 1}))
    run = train(config(data, tmp_path, method="atp", name="atp", **{"model.init_from": str(cot / "final"),
                                                                   "curriculum.max_latent_stage": 3}))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert {"train/ce", "train/kl", "train/decoder", "train/stop", "train/active_latents"} <= set(train_rows[0])
    assert {r["train/stage"] for r in train_rows} == {1, 2, 3}
    # Every record once per epoch in equal batches: an epoch's mean of active latents is the mean over records of
    # min(stage, #steps) * c (c = 1), the stop head masking the surplus slots of records with fewer steps.
    from atp_latent.data.formats import load_records

    n_steps = [len(p.steps) for p in load_records(data / "train.jsonl")]
    for stage in (1, 2, 3):
        got = [r["train/active_latents"] for r in train_rows if r["train/stage"] == stage]
        expect = sum(min(stage, n) for n in n_steps) / len(n_steps)
        assert sum(got) / len(got) == pytest.approx(expect), stage
    assert sum(min(n, 3) for n in n_steps) < 3 * len(n_steps)  # some records have surplus slots
    model, _ = LatentReasoner.from_pretrained(run / "final")
    assert model.latent_head is not None and model.decoder is not None


SHARD_SCRIPT = '''
import json, os, sys
from atp_latent.config import load_config
from atp_latent.data.sequences import SequenceBuilder
from atp_latent.training import sft

real_build, trained = SequenceBuilder.build, []


def build(self, problem, stage, rng=None):  # what this process trains on, in order (CoLaR: and its drawn labels)
    example = real_build(self, problem, stage, rng)
    trained.append([problem.question, problem.answer, stage, example.comp_labels])
    return example


SequenceBuilder.build = build
run = sft.train(load_config(None, sys.argv[1:]))
with open(run / ("trained-" + os.environ.get("RANK", "0") + ".json"), "w") as f:
    json.dump(trained, f)
'''


@pytest.mark.parametrize("method, port, extra, keys", [
    ("simcot", 29571, [], ("train/loss",)),
    ("icot", 29573, [], ("train/loss",)),
    # CODI: 6 latents from the first step (a record's sampled stage only moves steps into the teacher's view), and the
    # teacher CE and distillation curves (their std over half the rows differs slightly from the global one)
    ("codi", 29575, ["method.latents_per_step=2", "curriculum.max_latent_stage=3", "curriculum.stage_offset=4"],
     ("train/loss", "train/ce", "train/distill", "train/ce_teacher")),
    # CoLaR: c drawn per global batch, group labels drawn per record the same on either process; the NLL latent loss
    # (MSE draws its sample from each process's own stream)
    ("colar", 29599, ["method.latent_loss=nll", "method.max_compression=3", "curriculum.max_latent_stage=40"],
     ("train/loss", "train/ce", "train/latent")),
])
def test_two_processes_match_one_process(data, tmp_path, method, port, extra, keys):
    """DDP on 2 CPU processes (gloo): identical replicas; together the two processes train on exactly the rows (and
    sampled stages; iCoT: removed chain tokens) of each global batch of a 1-process run with the same global batch,
    and follow its loss curve (per-process token means differ slightly from one global mean, hence the
    tolerance)."""
    import subprocess
    import sys

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)

    def start(name, procs, bs):
        sets = [f"data.train={data / 'train.jsonl'}", "data.val=null", f"method.name={method}", "train.epochs=2",
                f"optim.batch_size={bs}", "train.log_every=1", "train.threads=1", "method.latents_per_step=1",
                "curriculum.max_latent_stage=2", "curriculum.epochs_per_stage=1", "optim.lr=0.003",
                "curriculum.uniform_prob=0.5",  # stages differ within a batch: a record must keep its own
                "optim.reset_each_epoch=false",  # a fresh Adam step is sign-sensitive to float noise
                "curriculum.remove_per_epoch=3", "curriculum.removal_lambda=1.0",  # iCoT: offsets differ per record
                "train.report_to=[]", f"output_dir={tmp_path}", f"name={name}", *extra]
        launch = [] if procs == 1 else ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                        str(procs), "--num_machines", "1", "--mixed_precision", "no",
                                        "--dynamo_backend", "no", "--main_process_port", str(port)]
        return subprocess.Popen([sys.executable, *launch, str(script), *sets], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def rows(name, proc):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        return rows_of(tmp_path / name)

    def trained(name, rank, bs):
        """The rows process `rank` trained on, per batch."""
        seen = [tuple(r) for r in json.loads((tmp_path / name / f"trained-{rank}.json").read_text())]
        return [seen[i: i + bs] for i in range(0, len(seen), bs)]

    procs = {"one": start("one", 1, 16), "two": start("two", 2, 8)}  # side by side
    one, two = rows("one", procs["one"]), rows("two", procs["two"])
    assert any(r.get("train/processes") == 2 and r.get("train/replicas_in_sync") == 1 for r in two)
    for key in keys:
        l1, l2 = [r[key] for r in one if key in r], [r[key] for r in two if key in r]
        assert len(l1) == len(l2) == 12, key
        for a, b in zip(l1, l2):
            assert abs(a - b) <= 0.05 * max(abs(a), 1.0), (key, l1, l2)
    batches, rank0, rank1 = trained("one", 0, 16), trained("two", 0, 8), trained("two", 1, 8)
    assert len(batches) == len(rank0) == len(rank1) == 12
    assert len({r[2] for b in batches for r in b}) > 1
    for whole, mine, theirs in zip(batches, rank0, rank1):
        assert sorted(mine + theirs) == sorted(whole)


def test_non_finite_loss_stops_with_step_and_term(data, tmp_path, monkeypatch):
    """A NaN loss stops the run naming the step and the term; the last good checkpoint stays intact."""
    from atp_latent.modeling.reasoner import LatentReasoner as LR

    real_forward = LR.forward
    calls = {"n": 0}

    def forward(self, batch):
        out = real_forward(self, batch)
        calls["n"] += 1
        if calls["n"] == 5:
            out["kl"] = out["kl"] * float("nan")
            out["loss"] = out["loss"] + out["kl"]
        return out

    monkeypatch.setattr(LR, "forward", forward)
    cfg = config(data, tmp_path, name="nan", **{"train.checkpoint_every": 2, "train.epochs": 1})
    with pytest.raises(FloatingPointError, match=r"step 4 .*kl"):
        train(cfg)
    ckpts = sorted((tmp_path / "nan" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    assert all((c / "COMPLETE").is_file() for c in ckpts)
    LatentReasoner.from_pretrained(ckpts[-1] / "model")
    assert not (tmp_path / "nan" / "final").exists()


def test_non_finite_gradient_stops_before_the_weights_are_written(data, tmp_path, monkeypatch):
    """A finite loss whose backward is not finite (what cuDNN's attention backward gave on an H200, pytorch#196678)
    stops the run at that step naming the first parameter hit, instead of clipping NaN into the weights. The
    cuDNN attention kernel itself is off by default (train.cudnn_attention) and on when asked for."""
    from atp_latent.modeling.reasoner import LatentReasoner as LR
    from atp_latent.training.sft import prepare_run

    real_forward = LR.forward
    calls = {"n": 0}

    def forward(self, batch):
        out = real_forward(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:  # + sqrt(0 * w): adds 0, and its gradient is inf * 0 = NaN in every entry of w
            w = self.lm.get_input_embeddings().weight
            out["loss"] = out["loss"] + torch.sqrt((w * 0.0).sum())
        return out

    monkeypatch.setattr(LR, "forward", forward)
    cfg = config(data, tmp_path, name="nangrad", **{"train.checkpoint_every": 1, "train.epochs": 1})
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 2 \(loss [0-9.]+; first in "
                                                 r"lm\.model\.embed_tokens\.weight\)"):
        train(cfg)
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    last = sorted((tmp_path / "nangrad" / "checkpoints").glob("step-*"))[-1]
    assert last.name == "step-00000002"
    model, _ = LatentReasoner.from_pretrained(last / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    try:
        prepare_run(config(data, tmp_path, name="cudnn", **{"train.cudnn_attention": "true"}), False, False)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)  # torch's default, for the tests that follow


# ----- paper-scale defects (regressions) -----

def test_reset_each_epoch_keeps_one_optimizer_state(data, tmp_path, monkeypatch):
    """reset_each_epoch (the paper setting) resets AdamW in place: after 3 epochs exactly one optimizer state is
    alive (accelerate keeps every prepared optimizer, so re-creating one per epoch piled up ~20 GB each at 1B),
    and its step count is that of the last epoch only."""
    import gc
    import weakref

    from atp_latent.training import sft

    made, seen = [], {}
    real_make, real_finish = sft.make_optimizer, sft.finish_run

    def make(model, cfg):
        opt = real_make(model, cfg)
        made.append(weakref.ref(opt))
        return opt

    def finish(*args, **kwargs):
        gc.collect()
        alive = [r() for r in made if r() is not None]
        seen["alive"] = len(alive)
        seen["steps"] = {float(s["step"]) for o in alive for s in o.state.values()}
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(sft, "make_optimizer", make)
    monkeypatch.setattr(sft, "finish_run", finish)
    train(config(data, tmp_path, method="atp", name="reset", **{"optim.reset_each_epoch": "true", "data.val": "null"}))
    assert seen["alive"] == 1
    assert seen["steps"] == {6.0}  # 96 records / batch 16 = 6 steps in the last epoch, not 18


def test_bf16_model_dtype_trains_and_resumes_exactly(data, tmp_path, kill_after_checkpoint):
    """model.dtype=bfloat16 without autocast: an ATP run trains, its heads are bf16, and a resumed run ends
    with the weights of the uninterrupted one."""
    over = {"model.dtype": "bfloat16", "data.val": "null", "optim.lr": "0.001", "train.epochs": 2, "data.max_train": 48}
    full = train(config(data, tmp_path, method="atp", name="bf_full", **over))
    kill_after_checkpoint(config(data, tmp_path, method="atp", name="bf_cut", **over, **{"train.checkpoint_every": 4}),
                          4)  # mid-epoch 1
    resumed = train(config(data, tmp_path, method="atp", name="bf_cut", **over), resume=True)
    a, _ = LatentReasoner.from_pretrained(full / "final")
    b, _ = LatentReasoner.from_pretrained(resumed / "final")
    assert a.lm.dtype == torch.bfloat16 and a.latent_head.mu.weight.dtype == torch.bfloat16
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


CLOCK_SCRIPT = '''
import os, sys, time as _time
from atp_latent.config import load_config
from atp_latent.training import rl, sft

if os.environ.get("RANK") == "1":  # this process's clock runs 1000x fast: it alone believes the budget is spent
    start = _time.time()

    class FastClock:
        def __getattr__(self, name):
            return getattr(_time, name)

        def time(self):
            return start + (_time.time() - start) * 1000

    sft.time = rl.time = FastClock()
(sft.train if sys.argv[1] == "sft" else rl.train_rl)(load_config(None, sys.argv[2:]))
'''


@pytest.mark.parametrize("kind", ["sft", "rl"])
def test_time_budget_stop_is_one_decision_across_processes(data, tmp_path, kind):
    """Two processes whose clocks disagree stop at the same step (one collective decision), instead of one
    entering the final gather while the other all-reduces the next step's gradients (a hang)."""
    import subprocess
    import sys

    from atp_latent.modeling.factory import build_tiny_model
    from atp_latent.modeling.reasoner import ReasonerSpec
    from atp_latent.modeling.tokenizer import build_word_tokenizer

    script = tmp_path / "clock.py"
    script.write_text(CLOCK_SCRIPT)
    sets = [f"data.train={data / 'train.jsonl'}", "data.val=null", "train.threads=1", "train.max_minutes=0.5",
            "train.log_every=1", f"output_dir={tmp_path}", "name=clock"]
    if kind == "sft":
        # atp: its logged terms (train/sigma too) are reduced over both processes, so every process must log them
        sets += ["method.name=atp", "train.epochs=2", "optim.batch_size=8", "method.latents_per_step=1",
                 "curriculum.max_latent_stage=2"]
    else:
        tok = build_word_tokenizer(["Ann has 3 cats. How many?", "<<1+2=3>>\n### 3"])
        spec = ReasonerSpec.for_method("atp", latents_per_step=1, max_latent_stage=2)
        LatentReasoner(build_tiny_model("llama-tiny", tok), spec).save_pretrained(tmp_path / "start", tok)
        sets += ["method.name=atp-rl", f"model.init_from={tmp_path / 'start'}", "rl.steps=20",
                 "rl.questions_per_step=2", "rl.group_size=2", "rl.minibatch_size=4", "rl.max_new_tokens=3"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "29581" if kind == "sft" else "29582", str(script), kind, *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "clock" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert steps == [1]  # rank 1 was out of time after its first step; rank 0 (30 s left) stopped with it
    if kind == "sft":
        logged = next(r for r in rows if "train/loss" in r)
        assert 0 < logged["train/sigma"] < 10 and logged["train/kl"] > 0
    assert any(r.get("train/replicas_in_sync") == 1 for r in rows)
    # the cut is recorded and said: the run did not follow its schedule
    from atp_latent.evaluation.report import run_cost

    cost = run_cost(tmp_path / "clock")
    assert cost["stopped_early"] and cost["steps"] == 1
    assert cost["scheduled_steps"] == 20 if kind == "rl" else cost["scheduled_steps"] > 1
    assert f"stopped at step 1 of {cost['scheduled_steps']}" in proc.stdout + proc.stderr


def test_best_checkpoint_and_learning_rate_by_hand(data, tmp_path, monkeypatch):
    """best/ is the first epoch with the highest validation accuracy (ties keep the earlier one), and step s (from 0)
    runs at lr * min(1, (s + 1) / warmup) * (0.1 + 0.9 * (1 + cos(pi * s / total)) / 2)."""
    import math
    from types import SimpleNamespace

    from atp_latent.training import sft

    accs, lrs = iter([0.25, 0.5, 0.5]), []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(sft, "validate", lambda *a, **k: (SimpleNamespace(accuracy=next(accs)), []))
    monkeypatch.setattr(sft, "make_optimizer", lambda model, cfg: RecordingAdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay))
    run = train(config(data, tmp_path, name="best", **{"data.max_train": 16, "optim.batch_size": 8,
                                                         "optim.warmup_steps": 3, "optim.schedule": "cosine"}))
    state = torch.load(run / "best" / "trainer_state.pt", weights_only=False)
    assert state["progress"]["step"] == 4 and state["progress"]["best_val"] == 0.5
    vals = [(r["step"], r["eval/val_accuracy"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "eval/val_accuracy" in r]
    assert vals == [(2, 0.25), (4, 0.5), (6, 0.5)]
    expect = [0.003 * min(1, (s + 1) / 3) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 6))) for s in range(6)]
    assert lrs == pytest.approx(expect, rel=1e-9)


def test_learning_rate_follows_steps_not_the_clock():
    """train.max_minutes is a safety stop: the schedule is the same on a fast and a slow machine."""
    from atp_latent.training.sft import learning_rate

    cfg = load_config(None, ["optim.lr=0.01", "optim.warmup_steps=0", "optim.schedule=cosine",
                             "train.max_minutes=1"])
    assert learning_rate(cfg, 0, 100) == pytest.approx(0.01)
    assert learning_rate(cfg, 50, 100) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))  # cos(pi/2) = 0
    assert learning_rate(cfg, 100, 100) == pytest.approx(0.001)


def test_length_buckets_sort_each_chunk_and_keep_every_problem():
    """data.length_buckets: each chunk of (batch size x buckets) problems of the shuffled order is sorted by length
    (question + steps, in characters), so a batch pads little; every problem stays, once."""
    from atp_latent.data.records import Problem
    from atp_latent.training.sft import bucket_by_length

    sizes = [7, 3, 9, 1, 5, 8, 2, 6]  # question length + step lengths, by problem index
    problems = [Problem(question="q" * (n - 1), steps=["s"], answer="1") for n in sizes]
    order = [4, 0, 7, 2, 6, 1, 5, 3]  # a shuffled order: sizes 5 7 6 9 | 2 3 8 1
    assert bucket_by_length(order, problems, 4) == [4, 7, 0, 2, 3, 6, 1, 5]  # 5 6 7 9 | 1 2 3 8
    assert bucket_by_length(order, problems, 3) == [4, 7, 0, 6, 1, 2, 3, 5]  # 5 6 7 | 2 3 9 | 1 8
    assert bucket_by_length(order, problems, 8) == sorted(order, key=lambda i: sizes[i])


@pytest.mark.parametrize("buckets", [1, 3])
def test_sft_epoch_buckets_by_length_only_when_asked(data, tmp_path, monkeypatch, buckets):
    """The SFT loop sorts chunks of batch size x length_buckets problems (1: off), and still trains on every batch."""
    from atp_latent.training import sft

    calls = []
    real = sft.bucket_by_length
    monkeypatch.setattr(sft, "bucket_by_length", lambda order, problems, chunk: calls.append(chunk) or
                        real(order, problems, chunk))
    run = train(config(data, tmp_path, **{"train.epochs": 1, "data.length_buckets": buckets, "name": "b"}))
    assert calls == ([] if buckets == 1 else [16 * buckets])
    assert len(losses(run)) == 96 // 16


# ----- fp16 loss scaling, gradient accumulation, resume budget, processes stopping together -----

def rows_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def cosine_lr(peak: float, position: int, total: int) -> float:
    """The cosine schedule by hand (no warmup): 10% of the peak at position == total."""
    import math

    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * position / total)))


def test_grad_accum_counts_optimizer_steps(data, tmp_path, monkeypatch, capsys):
    """optim.grad_accum=2: 4 batches an epoch are 2 optimizer steps, so 2 epochs schedule 4 steps and the cosine
    schedule runs over those 4; the run is not reported cut short; it logs and checkpoints once per optimizer step;
    a window's gradient is the mean of its batches' (as one batch of twice the size)."""
    from atp_latent.training import sft

    lrs = []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(sft, "make_optimizer", lambda model, cfg: RecordingAdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay))
    over = {"data.max_train": 32, "data.length_buckets": 1, "data.val": "null", "optim.schedule": "cosine",
            "train.epochs": 2, "train.checkpoint_every": 1, "train.keep_last": 10, "train.report_to": "[]"}
    run = train(config(data, tmp_path, name="accum", **over, **{"optim.batch_size": 8, "optim.grad_accum": 2}))
    expect = [cosine_lr(0.003, s, 4) for s in range(4)]
    assert lrs == pytest.approx(expect, rel=1e-9)
    rows = rows_of(run)
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["train/lr"] for r in steps] == pytest.approx(expect, rel=1e-9)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in (1, 2, 3, 4)]
    finished = next(r for r in rows if "train/finished" in r)
    assert finished["step"] == finished["train/scheduled_steps"] == 4
    assert "stopped at step" not in capsys.readouterr().out
    one = rows_of(train(config(data, tmp_path, name="one", **over, **{"optim.batch_size": 16})))
    one = [r for r in one if "train/loss" in r]
    # per-batch token means differ slightly from one mean over both batches, hence the tolerance
    for key in ("train/loss", "train/grad_norm"):
        assert [r[key] for r in steps] == pytest.approx([r[key] for r in one], rel=0.05), key


def test_resume_refuses_a_changed_budget(data, tmp_path, capsys, kill_after_checkpoint):
    """train.epochs and train.max_steps set the learning-rate schedule: a resumed run keeps them, and a change is
    refused in one line naming the key and both values, before anything is written. A checkpoint written before
    budgets were recorded is accepted."""
    import re

    from atp_latent.cli import main

    over = {"data.max_train": 32, "optim.batch_size": 8, "optim.schedule": "cosine", "train.epochs": 2,
            "data.val": "null", "train.report_to": "[]", "name": "b"}
    kill_after_checkpoint(config(data, tmp_path, **over, **{"train.checkpoint_every": 2}), 2)
    run = tmp_path / "b"
    before = [(run / f).read_text() for f in ("metrics.jsonl", "config.yaml")]
    for change, named in (({"train.epochs": 3}, "train.epochs 2 -> 3"), ({"train.max_steps": 6}, "train.max_steps null -> 6")):
        with pytest.raises(ValueError, match=re.escape(named)):
            train(config(data, tmp_path, **(over | change)), resume=True)
        assert [(run / f).read_text() for f in ("metrics.jsonl", "config.yaml")] == before
    args = ["train", "--resume"] + [a for s in config_sets(data, tmp_path, **(over | {"train.epochs": 3}))
                                    for a in ("--set", s)]
    capsys.readouterr()  # the progress bars so far
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "train.epochs 2 -> 3" in err, err
    state = torch.load(run / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=False)
    assert state["progress"]["budget"] == {"train.epochs": 2, "train.max_steps": None, "scheduled_steps": 8}
    assert [r["step"] for r in rows_of(train(config(data, tmp_path, **over), resume=True))
            if "train/loss" in r] == list(range(1, 9))
    legacy = over | {"name": "legacy"}
    kill_after_checkpoint(config(data, tmp_path, **legacy, **{"train.checkpoint_every": 2}), 2)
    ckpt = tmp_path / "legacy" / "checkpoints" / "step-00000002" / "trainer_state.pt"
    state = torch.load(ckpt, weights_only=False)
    del state["progress"]["budget"]  # as written before budgets were recorded
    torch.save(state, ckpt)
    train(config(data, tmp_path, **(legacy | {"train.epochs": 3})), resume=True)


def overflow_at(monkeypatch, calls: set[int]) -> dict:
    """Make the backward of these forward calls (counted from 1 in the returned dict's "n") overflow: a finite loss
    whose gradient is NaN in the embeddings, as an fp16 overflow leaves it after unscaling."""
    from atp_latent.modeling.reasoner import LatentReasoner as LR

    real_forward, count = LR.forward, {"n": 0}

    def forward(self, batch):
        out = real_forward(self, batch)
        count["n"] += 1
        if count["n"] in calls or "every" in calls:
            w = self.lm.get_input_embeddings().weight
            out["loss"] = out["loss"] + torch.sqrt((w * 0.0).sum())
        return out

    monkeypatch.setattr(LR, "forward", forward)
    return count


def test_fp16_overflow_skips_the_step_and_the_run_goes_on(data, tmp_path, monkeypatch, fp16_on_cpu,
                                                          kill_after_checkpoint):
    """Under fp16 loss scaling an overflowed gradient is a step the scaler skips, lowering its scale (certain in
    the first steps of a real run): the run goes on; the loop counts the skipped steps as accelerate's
    optimizer_step_was_skipped does; the schedule does not advance over them; a resumed run restores the scale."""
    from accelerate.optimizer import AcceleratedOptimizer

    seen = []  # (optimizer_step_was_skipped, lr) of every optimizer step
    real_step = AcceleratedOptimizer.step

    def step(self, *args, **kwargs):
        real_step(self, *args, **kwargs)
        seen.append((self.step_was_skipped, self.param_groups[0]["lr"]))

    monkeypatch.setattr(AcceleratedOptimizer, "step", step)
    count = overflow_at(monkeypatch, {2, 3})
    over = {"train.mixed_precision": "fp16", "data.max_train": 32, "optim.batch_size": 8, "train.epochs": 2,
            "optim.schedule": "cosine", "data.val": "null", "train.report_to": "[]"}
    full = train(config(data, tmp_path, name="fp16", **over))
    assert [s for s, _ in seen] == [False, True, True, False, False, False, False, False]
    positions = [0, 1, 1, 1, 2, 3, 4, 5]  # a skipped step does not move the schedule on
    assert [lr for _, lr in seen] == pytest.approx([cosine_lr(0.003, p, 8) for p in positions], rel=1e-9)
    last = [r for r in rows_of(full) if "train/loss" in r][-1]
    assert last["step"] == 8 and last["train/skipped_steps"] == 2 and last["train/loss_scale"] == 2.0**14
    model, _ = LatentReasoner.from_pretrained(full / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    count["n"] = 0
    kill_after_checkpoint(config(data, tmp_path, name="fp16_cut", **over, **{"train.checkpoint_every": 4}), 4)
    count["n"] = 4  # the resumed run starts at the 5th batch
    resumed = train(config(data, tmp_path, name="fp16_cut", **over), resume=True)
    assert [r for r in rows_of(resumed) if "train/loss" in r][-1] == last
    b, _ = LatentReasoner.from_pretrained(resumed / "final")
    for (name, x), y in zip(model.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name, rtol=0, atol=0)


def test_fp16_stops_after_many_skipped_steps_in_a_row(data, tmp_path, monkeypatch, fp16_on_cpu):
    """An overflow at every step is divergence, not loss scaling: the run stops after 20 skipped steps in a row."""
    overflow_at(monkeypatch, {"every"})
    cfg = config(data, tmp_path, name="fp16_bad", **{"train.mixed_precision": "fp16", "data.max_train": 48,
                                                      "optim.batch_size": 2, "train.epochs": 1, "data.val": "null"})
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 19 .*first in lm\.model\.embed_tokens"
                                                 r"\.weight.*20 optimizer steps in a row skipped"):
        train(cfg)


def test_checkpoint_saves_and_resume_restores_the_cuda_rng(tmp_path, monkeypatch):
    """On a GPU the latent noise comes from CUDA's generators: a checkpoint holds every device's state and a resume
    puts them back (else a resumed run replays the noise). This machine has no GPU: only the CUDA RNG calls are
    faked."""
    from types import SimpleNamespace

    from atp_latent.modeling.factory import build_tiny_model
    from atp_latent.modeling.reasoner import ReasonerSpec
    from atp_latent.modeling.tokenizer import build_word_tokenizer
    from atp_latent.training import sft

    tok = build_word_tokenizer(["Ann has 3 cats. How many?", "<<1+2=3>>\n### 3"])
    model = LatentReasoner(build_tiny_model("llama-tiny", tok), ReasonerSpec.for_method("cot"))
    devices = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    accelerator = SimpleNamespace(unwrap_model=lambda m: m, num_processes=1, process_index=0, scaler=None)
    sft.save_checkpoint(tmp_path / "ckpt", accelerator, model, tok, torch.optim.AdamW(model.parameters()), {"step": 1})
    rng = torch.load(tmp_path / "ckpt" / "trainer_state.pt", weights_only=False)["rng"]
    assert [d.tolist() for d in rng["cuda"]] == [[1, 2, 3], [4, 5]]
    sft.restore_rng_states(rng, accelerator)
    assert [[d.tolist() for d in states] for states in restored] == [[[1, 2, 3], [4, 5]]]


NAN_SCRIPT = '''
import os, sys
from atp_latent.config import load_config
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.training import sft

rank = os.environ["RANK"]
if rank == "1":  # only this process's loss turns NaN, at its third batch
    real_forward, calls = LatentReasoner.forward, [0]

    def forward(self, batch):
        out = real_forward(self, batch)
        calls[0] += 1
        if calls[0] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    LatentReasoner.forward = forward
try:
    sft.train(load_config(None, sys.argv[2:]))
except FloatingPointError as e:
    open(os.path.join(sys.argv[1], "stopped-" + rank), "w").write(str(e))
'''


def test_nonfinite_loss_on_one_process_stops_every_process(data, tmp_path):
    """A NaN loss on process 1 alone stops both processes at that step with a FloatingPointError (one all-reduce of
    a flag), instead of process 0 going on into the gradient all-reduce without it (a wait until the collective
    timeout, or a connection error)."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "nan.py"
    script.write_text(NAN_SCRIPT)
    sets = [f"data.train={data / 'train.jsonl'}", "data.val=null", "train.threads=1", "data.max_train=48",
            "optim.batch_size=8", "train.epochs=1", "train.report_to=[]", f"output_dir={tmp_path}", "name=nan"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "29585", str(script), str(tmp_path), *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("process 0 did not stop with process 1")
    stopped = {p.name: p.read_text() for p in tmp_path.glob("stopped-*")}
    assert sorted(stopped) == ["stopped-0", "stopped-1"], out[-3000:]
    assert stopped["stopped-1"] == "non-finite loss at step 2 (term: loss) on process 1"
    assert stopped["stopped-0"].startswith("non-finite loss on process 1 ")


RESUME_SCRIPT = '''
import json, os, sys
import torch
from atp_latent.config import load_config
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.training import sft

out, sets = sys.argv[1], sys.argv[2:]
rank = os.environ["RANK"]
sft.train(load_config(None, sets + ["name=full"]))


class Killed(Exception):
    pass


real_rng, real_save = sft.rng_states, sft.save_checkpoint


def rng_states(accelerator=None):  # taken on every process before a checkpoint: the others stop here
    states = real_rng(accelerator)
    if rank != "0":
        raise Killed
    return states


def save_checkpoint(path, *args, **kwargs):  # the main process stops once it has written step 2 (mid-epoch 0)
    real_save(path, *args, **kwargs)
    raise Killed


sft.rng_states, sft.save_checkpoint = rng_states, save_checkpoint
try:
    sft.train(load_config(None, sets + ["name=killed", "train.checkpoint_every=2"]))
except Killed:
    pass
sft.rng_states, sft.save_checkpoint = real_rng, real_save
sft.train(load_config(None, sets + ["name=killed"]), resume=True)
if rank == "0":
    a, _ = LatentReasoner.from_pretrained(os.path.join(out, "full", "final"))
    b, _ = LatentReasoner.from_pretrained(os.path.join(out, "killed", "final"))
    same = {n: bool(torch.equal(x, y)) for (n, x), y in zip(a.state_dict().items(), b.state_dict().values())}
    open(os.path.join(out, "same.json"), "w").write(json.dumps(same))
'''


def test_two_process_resume_gives_each_process_its_own_random_streams(data, tmp_path):
    """ATP's latent noise differs between processes (each draws for its own records), so a checkpoint holds every
    process's random streams and each resumes its own: a 2-process run killed after its step-2 checkpoint and
    resumed ends with the weights of the uninterrupted one (every process restoring the main one's did not)."""
    import subprocess
    import sys

    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    sets = [f"data.train={data / 'train.jsonl'}", "data.val=null", "method.name=atp", "train.threads=1",
            "data.max_train=32", "optim.batch_size=2", "train.epochs=2", "method.latents_per_step=1",
            "curriculum.max_latent_stage=3", "curriculum.epochs_per_stage=1", "optim.lr=0.003",
            # a batch has as many latent slots as its records' largest sampled stage: unequal noise per process
            "curriculum.uniform_prob=0.5", "train.report_to=[]", f"output_dir={tmp_path}"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "29584", str(script), str(tmp_path), *sets]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    same = json.loads((tmp_path / "same.json").read_text())
    assert all(same.values()), [n for n, s in same.items() if not s]
