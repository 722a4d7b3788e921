"""The bench scheduler: two slots, dependencies through STARTS, finished jobs skipped, failures reported."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from atp_latent import bench_results as results_mod
from atp_latent import jobs as jobs_mod
from atp_latent import scheduler as scheduler_mod
from atp_latent import suite as suite_mod
from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.evaluation import report as report_mod
from atp_latent.jobs import STARTS, SUITES, config_path
from atp_latent.scheduler import train_jobs

# polls a fake job needs before it finishes: 2, or more for these (so that not every job ends in lockstep)
SLOW_JOBS = {"atp_rl_new_style": 5}


class FakeJob:
    """Stands in for a training subprocess: finishes (writes final/reasoner.json) on its second poll (SLOW_JOBS:
    later)."""

    def __init__(self, run: Path, log: Path, returncode: int, events: list):
        self.run, self.log, self.rc, self.events, self.polls, self.returncode = run, log, returncode, events, 0, None

    def poll(self):
        self.polls += 1
        if self.polls < SLOW_JOBS.get(self.run.name, 2):
            return None
        if self.returncode is None:
            self.returncode = self.rc
            if self.rc == 0:
                (self.run / "final").mkdir(parents=True)
                (self.run / "final" / "reasoner.json").write_text("{}")
            self.events.append(("end", self.run))
        return self.returncode

    def terminate(self):
        self.events.append(("terminate", self.run))


@pytest.fixture
def fake_jobs(monkeypatch, tmp_path):
    events, failing = [], set()

    def start(suite, job, out, seed, scale, extra):
        events.append(("extra", (job, list(extra))))
        # A job may only start once the job it continues from has finished.
        if job in STARTS:
            assert (out / "runs" / STARTS[job] / "final" / "reasoner.json").is_file(), job
        running = [r for kind, r in events if kind == "start"]
        ended = [r for kind, r in events if kind == "end"]
        assert len(running) - len(ended) < 2, "more than two jobs at once"
        events.append(("start", out / "runs" / job))
        log = tmp_path / f"{out.name}-{job}.log"
        log.write_text(f"training {job}\nboom\n")
        return FakeJob(out / "runs" / job, log, 1 if job in failing else 0, events), log

    monkeypatch.setattr(scheduler_mod, "_start_job", start)
    monkeypatch.setattr(scheduler_mod.time, "sleep", lambda s: None)
    return events, failing


def test_every_bench_config_loads():
    s = SUITES["cpu"]
    for job in s.jobs + list(s.ablations):
        cfg = load_config(str(config_path(s, job)))
        assert cfg.name == job
        assert job in STARTS or job in ("cot", "nocot", "cot_short")
    assert load_config(str(config_path(s, "atp_no_kl"))).method.beta_kl == 0.0
    assert load_config(str(config_path(s, "atp_no_stop"))).method.use_stop_head is False
    assert load_config(str(config_path(s, "atp_no_decoder"))).method.use_decoder is False
    both = load_config(str(config_path(s, "atp_no_decoder_no_kl"))).method
    assert both.use_decoder is False and both.beta_kl == 0.0
    m = load_config(str(config_path(s, "atp_no_decoder_no_vae"))).method
    assert (m.use_decoder, m.use_vae, m.use_stop_head) == (False, False, None)  # None: the method's default (on)
    m = load_config(str(config_path(s, "atp_no_decoder_no_kl_no_stop"))).method
    assert (m.use_decoder, m.use_stop_head, m.beta_kl, m.use_vae) == (False, False, 0.0, None)
    m = load_config(str(config_path(s, "atp_no_decoder_no_kl_stop_detached"))).method
    assert (m.use_decoder, m.beta_kl, m.stop_head_detached, m.use_stop_head) == (False, 0.0, True, None)
    m = load_config(str(config_path(s, "atp_no_decoder_no_vae_stop_detached"))).method
    assert (m.use_decoder, m.use_vae, m.stop_head_detached, m.use_stop_head) == (False, False, True, None)
    assert load_config(str(config_path(s, "atp_no_vae"))).method.use_vae is False
    assert load_config(str(config_path(s, "atp_rl_no_coherence"))).rl.w_coh == 0.0
    assert load_config(str(config_path(s, "atp_rl_low_lr"))).rl.lr == 1e-5
    # RL from a start that leaves room: the quickstart's schedules, then its best recipe
    room = load_config(str(config_path(s, "atp_rl_room")))
    assert (room.rl.steps, room.rl.temperature, room.rl.latent_policy, room.rl.dynamic_sampling) == (600, 0.5, "mean", True)
    assert jobs_mod.with_starts(["atp_rl_room"]) == ["cot_short", "atp_short", "atp_rl_room"]
    assert load_config(str(config_path(s, "atp_short"))).train.epochs * 400 == 2400
    assert ("atp_rl_room", "atp_short") in jobs_mod.PAIRS
    # every GRPO knob has its ablation row, each differing from atp_rl in that knob only
    base = load_config(str(config_path(s, "atp_rl"))).rl
    changed = {}
    for job in jobs_mod.RL_KNOBS:
        knob = load_config(str(config_path(s, job))).rl
        changed[job] = {f for f in vars(base) if getattr(base, f) != getattr(knob, f)}
    assert changed == {"atp_rl_low_lr": {"lr"}, "atp_rl_high_lr": {"lr"}, "atp_rl_cosine": {"lr_schedule", "warmup_steps"},
                       "atp_rl_group16": {"group_size", "minibatch_size"}, "atp_rl_dynamic": {"dynamic_sampling"},
                       "atp_rl_dynamic8": {"dynamic_sampling", "oversample"},
                       "atp_rl_token_norm": {"loss_norm"}, "atp_rl_kl": {"kl_coef"},
                       "atp_rl_logratio_mean": {"latent_logratio"}, "atp_rl_latent_temp": {"latent_temperature"},
                       "atp_rl_heads_only": {"train_lm"}, "atp_rl_answer_temp05": {"temperature"},
                       "atp_rl_dynamic8_temp05": {"dynamic_sampling", "oversample", "temperature"},
                       "atp_rl_latent_mean": {"latent_policy"},
                       "atp_rl_dynamic8_temp05_latent_mean": {"dynamic_sampling", "oversample", "temperature",
                                                              "latent_policy"}}


def test_two_seeds_interleave_and_respect_starts(fake_jobs, tmp_path):
    events, _ = fake_jobs
    s = SUITES["cpu"]
    tasks = [(tmp_path / f"seed-{k}", j, k) for k in range(2) for j in s.jobs]
    tasks += [(tmp_path / "seed-0", j, 0) for j in s.ablations]
    train_jobs(s, tasks)
    started = [r for kind, r in events if kind == "start"]
    assert sorted(map(str, started)) == sorted(str(d / "runs" / j) for d, j, _ in tasks)
    # Seed 1's CoT starts before seed 0's last job ends: the second slot does not idle between seeds.
    first_seed1 = next(i for i, (kind, r) in enumerate(events) if kind == "start" and "seed-1" in str(r))
    last_seed0_end = max(i for i, (kind, r) in enumerate(events) if kind == "end" and "seed-0" in str(r)
                         and r.name in s.jobs)
    assert first_seed1 < last_seed0_end


def test_finished_jobs_are_skipped(fake_jobs, tmp_path):
    events, _ = fake_jobs
    s = SUITES["quickstart"]
    for job in ("cot", "nocot"):
        (tmp_path / "runs" / job / "final").mkdir(parents=True)
        (tmp_path / "runs" / job / "final" / "reasoner.json").write_text("{}")
    assert train_jobs(s, [(tmp_path, j, 0) for j in s.jobs]) == 3
    assert [r.name for kind, r in events if kind == "start"] == ["atp", "coconut", "atp_rl"]


def test_failure_names_job_and_log_and_stops_the_rest(fake_jobs, tmp_path):
    events, failing = fake_jobs
    failing.add("nocot")
    s = SUITES["quickstart"]
    with pytest.raises(RuntimeError, match=r"training nocot failed \(exit 1\).*boom"):
        train_jobs(s, [(tmp_path, j, 0) for j in s.jobs])
    assert not any(r.name == "atp_rl" for kind, r in events if kind == "start")


def test_missing_start_checkpoint_is_reported(fake_jobs, tmp_path):
    with pytest.raises(RuntimeError, match="cannot start atp_rl"):
        train_jobs(SUITES["quickstart"], [(tmp_path, "atp_rl", 0)])


def test_ablation_table_rows():
    rows = {"atp": {"accuracy": 0.125, "mean_tokens": 9.5, "mean_latents": 3.25, "sampled_accuracy": 0.1,
                    "sampled_accuracy_std": 0.02, "by_steps": {"2": {"n": 4, "accuracy": 0.25, "latents": 2.0},
                                                               "3": {"n": 4, "accuracy": 0.0, "latents": 2.5}}},
            "cot": {"accuracy": 0.4, "mean_tokens": 42.0, "mean_latents": 0.0}}
    lines = results_mod.ablation_table(rows).splitlines()
    assert lines[2] == "| ATP-Latent (SFT) | 12.5 | 10.0 ± 2.0 | 9.5 | 3.2 | 2: 25.0 (2.00); 3: 0.0 (2.50) |"
    assert lines[3] == "| CoT-SFT | 40.0 | - | 42.0 | 0.0 | - |"


def test_accuracy_by_steps_by_hand():
    problems = [Problem(question=f"q{i}", steps=["1+1=2"] * n, answer="2") for i, n in enumerate([2, 3, 2, 2, 3])]
    rows = [{"correct": c, "latents": k} for c, k in [(True, 2), (False, 3), (False, 2), (True, 1), (True, 3)]]
    by = suite_mod.accuracy_by_steps(problems, rows)
    assert list(by) == ["2", "3"]
    assert by["2"] == {"n": 3, "accuracy": pytest.approx(2 / 3), "latents": pytest.approx(5 / 3)}
    assert by["3"] == {"n": 2, "accuracy": 0.5, "latents": 3.0}


def test_cached_evaluation_recomputed_when_a_figure_is_missing(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "reasoner.json").write_text("{}")
    calls = []

    def compute(x):
        calls.append(x)
        return {"accuracy": x, "by_steps": {}}

    (tmp_path / "val_eval.json").write_text('{"accuracy": 0.5}')  # an older cache: no fingerprint, no by_steps
    def valid(v):
        return "by_steps" in v

    assert suite_mod._cached(tmp_path, "val_eval.json", compute, 0.7, valid=valid)["accuracy"] == 0.7
    assert suite_mod._cached(tmp_path, "val_eval.json", compute, 0.9, valid=valid)["accuracy"] == 0.7
    assert calls == [0.7]  # the second call reused the file the first wrote
    assert suite_mod._cached(tmp_path, "val_eval.json", compute, 0.8)["accuracy"] == 0.7  # no check: reused


def test_cached_evaluation_follows_the_run_not_file_times(tmp_path):
    """A cache stays valid in a copy or a fresh checkout of the run (every file's time changed, the cache possibly
    older than final/), and is recomputed when the run was trained again (its metrics log differs)."""
    import os
    import shutil

    run = tmp_path / "a" / "runs" / "atp"
    (run / "final").mkdir(parents=True)
    (run / "final" / "reasoner.json").write_text('{"method": "atp"}')
    (run / "metrics.jsonl").write_text('{"step": 10, "train/loss": 1.0}\n')
    calls = []

    def compute(x):
        calls.append(x)
        return {"accuracy": x}

    assert suite_mod._cached(run, "test_eval.json", compute, 0.4)["accuracy"] == 0.4
    copy = tmp_path / "b" / "runs" / "atp"
    shutil.copytree(run, copy)
    os.utime(copy / "test_eval.json", (1, 1))  # a checkout may write the cache before final/
    assert suite_mod._cached(copy, "test_eval.json", compute, 0.9)["accuracy"] == 0.4
    assert calls == [0.4]
    (copy / "metrics.jsonl").write_text('{"step": 10, "train/loss": 0.8}\n')  # trained again
    assert suite_mod._cached(copy, "test_eval.json", compute, 0.9)["accuracy"] == 0.9
    assert calls == [0.4, 0.9]
    (copy / "final" / "reasoner.json").unlink()  # unfinished: never read from the cache
    assert suite_mod._cached(copy, "test_eval.json", compute, 0.6)["accuracy"] == 0.6


def test_test_evaluation_keeps_which_problems_each_run_got_right(tmp_path, monkeypatch):
    """evaluate_jobs stores, per split, a 0/1 string in the split file's order (evaluate returns rows in input order),
    whose mean is the accuracy; a cached evaluation without it (older runs) is computed again."""
    from atp_latent.data.formats import write_jsonl
    from atp_latent.data.records import Problem
    from atp_latent.evaluation import evaluate as evaluate_mod

    out = tmp_path / "seed-0"
    n = {split: 3 + i for i, split in enumerate(suite_mod.TEST_SPLITS)}
    for split, k in n.items():
        write_jsonl(out / "data" / f"{split}.jsonl", [Problem(f"q{i}?", [], str(i)) for i in range(k)])
    (out / "runs" / "cot" / "final").mkdir(parents=True)
    (out / "runs" / "cot" / "final" / "reasoner.json").write_text("{}")
    monkeypatch.setattr(evaluate_mod, "load_for_eval", lambda run: (SimpleNamespace(spec=SimpleNamespace(
        method="cot")), None, None))

    def fake_evaluate(model, builder, problems, **kw):  # right on the problems whose answer is odd
        rows = [{"correct": int(p.answer) % 2 == 1, "latents": 0} for p in problems]
        acc = sum(r["correct"] for r in rows) / len(rows)
        return SimpleNamespace(as_dict=lambda: {"accuracy": acc}), rows

    monkeypatch.setattr(evaluate_mod, "evaluate", fake_evaluate)
    (out / "runs" / "cot" / "test_eval.json").write_text(json.dumps(
        {"results": {s: {"accuracy": 0.0} for s in suite_mod.TEST_SPLITS}, "latents": []}))  # before "correct"
    results, _ = suite_mod.evaluate_jobs(["cot"], out)
    for split, k in n.items():
        assert results["cot"][split]["correct"] == "".join(str(i % 2) for i in range(k))
        assert results["cot"][split]["accuracy"] == sum(i % 2 for i in range(k)) / k


def test_rl_vs_start_by_hand():
    """Per seed the accuracies and gains; the verdict is the paired bootstrap interval over problems and seeds."""
    # 3 seeds x 100 problems: RL gains 10, 3, 7 problems and loses none; coherence gains 1 and loses 2 on seed 0
    def row(start_right, rl_gained, coh_gained, coh_lost, n=100):
        start = "1" * start_right + "0" * (n - start_right)
        rl = "1" * (start_right + rl_gained) + "0" * (n - start_right - rl_gained)
        coh = "1" * (start_right - coh_lost) + "0" * coh_lost + "1" * coh_gained + "0" * (n - start_right - coh_gained)
        return {j: {"accuracy": c.count("1") / n, "correct": c}
                for j, c in (("atp", start), ("atp_rl", rl), ("atp_rl_coherence", coh))}

    rows = [row(40, 10, 1, 2), row(44, 3, 0, 0), row(42, 7, 0, 0)]
    table, summary = results_mod.rl_vs_start_table(rows, split="val_large", held_out=True)
    assert summary["atp"]["mean"] == pytest.approx(0.42) and summary["atp"]["std"] == pytest.approx(0.02)
    assert summary["atp_rl"]["gains"] == pytest.approx([0.10, 0.03, 0.07])
    assert summary["atp_rl"]["mean_gain"] == pytest.approx(0.2 / 3) and summary["n_problems"] == 100
    assert summary["atp_rl"]["gained_lost"] == [(10, 0), (3, 0), (7, 0)]
    lines = table.splitlines()
    # RL only gains: every replicate is above 0 (p < 1e-4); coherence: -1 of 300, the interval straddles 0
    assert lines[3].startswith("| ATP-Latent (RL) | 50.0, 47.0, 49.0 | 48.7 ± 1.5 | +10.0, +3.0, +7.0 | +6.7 [")
    assert lines[3].endswith(" | yes | +10 / -0, +3 / -0, +7 / -0 |")  # its lower end above 0
    res, _ = report_mod.rl_gain_interval(summary, "atp_rl_coherence")
    assert res.mean_difference == pytest.approx(-1 / 300) and res.ci_low < 0 < res.ci_high
    assert lines[4].endswith("| no | +1 / -2, +0 / -0, +0 / -0 |")
    # on the split best/ was picked on: no verdict
    table, _ = results_mod.rl_vs_start_table(rows, split="val", held_out=False)
    assert table.splitlines()[3].endswith("| selection split | +10 / -0, +3 / -0, +7 / -0 |")
    # without per-problem outcomes: the mean gain, no interval, no verdict
    bare = [{j: {"accuracy": v["accuracy"]} for j, v in r.items()} for r in rows]
    table, _ = results_mod.rl_vs_start_table(bare, split="val_large", held_out=True)
    assert table.splitlines()[3].endswith("| +6.7 (no per-problem outcomes) | - | - |")
    # where best/ was saved: a note under the table, and absent when a seed does not say
    for r, (a, b) in zip(rows, ((40, 0), (0, 0), (20, 0))):
        r["atp_rl"]["best_step"], r["atp_rl_coherence"]["best_step"], r["atp"]["best_step"] = a, b, 5200
    table, summary = results_mod.rl_vs_start_table(rows, split="val_large", held_out=True)
    assert summary["atp_rl"]["best_steps"] == [40, 0, 20] and "best_steps" not in summary["atp"]
    assert table.splitlines()[-1] == ("Each RL run's `best/` was saved at policy step ATP-Latent (RL): 40, 0, 20; "
                                      f"{results_mod._label('atp_rl_coherence')}: 0, 0, 0 (per seed; 0: RL never "
                                      "beat its start on val, so that `best/` is the start itself and scores as it "
                                      "does).")
    del rows[1]["atp_rl"]["best_step"]
    assert "best_steps" not in results_mod.rl_vs_start_table(rows, split="val_large", held_out=True)[1]["atp_rl"]


def test_best_step_reads_the_step_best_was_saved_at(tmp_path):
    """best_step: the progress step in best/trainer_state.pt; None without one."""
    import torch

    assert suite_mod.best_step(tmp_path) is None
    (tmp_path / "best").mkdir()
    torch.save({"optimizer": {}, "progress": {"step": 40, "best_val": 0.51}}, tmp_path / "best" / "trainer_state.pt")
    assert suite_mod.best_step(tmp_path) == 40
    torch.save({"progress": {}}, tmp_path / "best" / "trainer_state.pt")
    assert suite_mod.best_step(tmp_path) is None


def test_kept_start_note_names_rl_runs_whose_best_is_their_start(tmp_path):
    """The quickstart says why an RL row repeats its start's: its best/ was saved at step 0. A run that beat its
    start, or whose start is not among the jobs, gets no note."""
    import torch

    def run(job, step):
        (tmp_path / job / "best").mkdir(parents=True)
        torch.save({"progress": {"step": step}}, tmp_path / job / "best" / "trainer_state.pt")

    run("atp", 300)
    run("atp_rl", 0)
    note = suite_mod.kept_start_note(tmp_path, ["atp", "atp_rl"])
    assert "ATP-Latent (RL) never beat its start" in note and "ATP-Latent (SFT) itself" in note
    assert suite_mod.kept_start_note(tmp_path, ["atp_rl"]) == ""  # its start is not in the table
    torch.save({"progress": {"step": 20}}, tmp_path / "atp_rl" / "best" / "trainer_state.pt")
    assert suite_mod.kept_start_note(tmp_path, ["atp", "atp_rl"]) == ""


def test_rl_gain_interval_from_counts_when_outcomes_were_not_kept():
    """An older summary (gained / lost counts per seed, n_problems) gives the same mean gain as the outcomes would,
    and aligning the rebuilt differences across seeds widens the interval against the true, unaligned ones."""
    n = 200
    rl = ["1" * 12 + "0" * 188, "0" * 100 + "1" * 12 + "0" * 88]  # the seeds gain different problems
    start = ["0" * n, "0" * n]
    full = {"n_problems": n, "atp": {"correct": start}, "atp_rl": {"correct": rl}}
    counts = {"n_problems": n, "atp": {}, "atp_rl": {"gained_lost": [(12, 0), (12, 0)]}}
    exact, note = report_mod.rl_gain_interval(full, "atp_rl")
    rebuilt, note_counts = report_mod.rl_gain_interval(counts, "atp_rl")
    assert note == "" and "rebuilt" in note_counts
    assert exact.mean_difference == rebuilt.mean_difference == pytest.approx(0.06)
    assert rebuilt.ci_high - rebuilt.ci_low > exact.ci_high - exact.ci_low
    assert report_mod.rl_gain_interval({"atp": {}, "atp_rl": {"gained_lost": [(1, 0)]}}, "atp_rl") == (None, "")


def test_scale_stretches_steps_not_minutes_only(tmp_path):
    """--scale F: RL steps, the SFT epoch size and step cap, and the safety stop all scale by F."""
    s = SUITES["quickstart"]
    cot, rl, atp = (load_config(str(config_path(s, j))) for j in ("cot", "atp_rl", "atp"))
    sets = dict(x.split("=", 1) for x in scheduler_mod._scaled(config_path(s, "atp_rl"), [], 0.5))
    assert int(sets["rl.steps"]) == round(rl.rl.steps * 0.5)
    sets = dict(x.split("=", 1) for x in scheduler_mod._scaled(config_path(s, "atp"), [], 0.5))
    assert int(sets["data.epoch_size"]) == round(atp.data.epoch_size * 0.5)
    if atp.train.max_minutes:
        assert float(sets["train.max_minutes"]) == pytest.approx(atp.train.max_minutes * 0.5, abs=1e-3)
    # the overrides given with --set are applied first: a step cap set there is what gets scaled
    sets = dict(x.split("=", 1) for x in scheduler_mod._scaled(config_path(s, "cot"), ["train.max_steps=100"], 2.0))
    assert sets["train.max_steps"] == "200"
    assert cot.method.name == "cot"


def test_val_large_is_in_distribution_fresh_and_fixed(tmp_path):
    """write_val_large: n problems of the val distribution (2-3 steps, no rewording), none a question of any split
    of the seed folder (planted ones are dropped), the same file from the same data seed, kept at the same size."""
    from atp_latent.data.formats import load_records, write_jsonl
    from atp_latent.data.synthetic import SPLITS, SynthConfig, write_benchmark

    first = tmp_path / "first"
    write_benchmark(first / "data", SynthConfig(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    drawn = load_records(suite_mod.write_val_large(first, data_seed=5, n=50))
    assert len(drawn) == 50 and len({r.question for r in drawn}) == 50
    assert all(2 <= len(r.steps) <= 3 and r.answer for r in drawn)
    taken = {r.question for s in SPLITS for r in load_records(first / "data" / f"{s}.jsonl")}
    assert not taken & {r.question for r in drawn}
    # a seed folder whose training set holds 5 of those questions gets 50 others in the same order
    planted = tmp_path / "planted"
    write_benchmark(planted / "data", SynthConfig(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    write_jsonl(planted / "data" / "train.jsonl", load_records(planted / "data" / "train.jsonl") + drawn[:5])
    again = load_records(suite_mod.write_val_large(planted, data_seed=5, n=50))
    assert [r.question for r in again[:45]] == [r.question for r in drawn[5:]]
    assert not {r.question for r in drawn[:5]} & {r.question for r in again}
    # the same data seed gives the same file; one of the requested size is kept, another size is redrawn
    path = first / "data" / "val_large.jsonl"
    before = path.read_bytes()
    assert suite_mod.write_val_large(first, data_seed=5, n=50).read_bytes() == before
    assert len(load_records(suite_mod.write_val_large(first, data_seed=5, n=30))) == 30


def test_val_large_is_drawn_in_the_folders_regime(tmp_path):
    """A many-plans seed folder's held-out problems (val_large, fresh) come from the many-plans regime, as its val
    does: 3-5 steps, each with at least two valid orders, none a question of the folder's splits."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.synthetic import SPLITS, SynthConfig, valid_orders, write_benchmark

    write_benchmark(tmp_path / "data", SynthConfig.many_plans(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    taken = {r.question for s in SPLITS for r in load_records(tmp_path / "data" / f"{s}.jsonl")}
    for drawn in (load_records(suite_mod.write_val_large(tmp_path, data_seed=5, n=40)),
                  load_records(suite_mod.write_fresh(tmp_path, data_seed=5, n=40))):
        assert len(drawn) == 40 and not taken & {r.question for r in drawn}
        assert all(3 <= len(r.steps) <= 5 and len(valid_orders(r)) >= 2 for r in drawn)
    assert max(len(r.steps) for r in drawn) >= 4


def test_new_style_questions_are_fresh_and_fixed(tmp_path):
    """write_new_style: the requested counts, none of them a question of any split of the seed folder, the same
    files from the same data seed, kept when present; atp_rl_new_style is started on them."""
    import json

    from atp_latent.data.formats import load_records
    from atp_latent.data.synthetic import SPLITS, SynthConfig, write_benchmark

    out = tmp_path / "seed-0"
    write_benchmark(out / "data", SynthConfig(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    suite_mod.write_new_style(out, data_seed=5, n_train=60, n_val=15)
    train, val = (load_records(out / "data" / "new_style" / f"{s}.jsonl") for s in ("train", "val"))
    assert len(train) == 60 and len(val) == 15
    taken = {r.question for s in SPLITS for r in load_records(out / "data" / f"{s}.jsonl")}
    questions = [r.question for r in train + val]
    assert len(set(questions)) == 75 and not taken & set(questions)
    assert all(r.answer and r.steps for r in train + val)
    # the same files from the same data seed, and an existing folder is kept as it is
    again = tmp_path / "again"
    write_benchmark(again / "data", SynthConfig(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    suite_mod.write_new_style(again, data_seed=5, n_train=60, n_val=15)
    for s in ("train", "val"):
        assert (again / "data" / "new_style" / f"{s}.jsonl").read_bytes() == \
            (out / "data" / "new_style" / f"{s}.jsonl").read_bytes()
    (out / "data" / "new_style" / "val.jsonl").write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    suite_mod.write_new_style(out, data_seed=5, n_train=60, n_val=15)
    assert len(load_records(out / "data" / "new_style" / "val.jsonl")) == 1


def test_jobs_start_on_their_own_data(tmp_path, monkeypatch):
    started = {}

    def popen(args, **kw):
        started[args[args.index("--name") + 1]] = dict(a.split("=", 1) for a in args if a.startswith("data."))
        return None

    monkeypatch.setattr(scheduler_mod.subprocess, "Popen", popen)
    for job in ("atp_rl", "atp_rl_new_style", "atp_rl_new_style_dynamic"):
        scheduler_mod._start_job(SUITES["cpu"], job, tmp_path, 0, 1.0, [])
    assert started["atp_rl"] == {"data.train": str(tmp_path / "data" / "train.jsonl"),
                                 "data.val": str(tmp_path / "data" / "val.jsonl")}
    for job in ("atp_rl_new_style", "atp_rl_new_style_dynamic"):
        assert started[job] == {"data.train": str(tmp_path / "data" / "new_style" / "train.jsonl"),
                                "data.val": str(tmp_path / "data" / "new_style" / "val.jsonl")}
    plain, dynamic = (load_config(str(config_path(SUITES["cpu"], j))).rl
                      for j in ("atp_rl_new_style", "atp_rl_new_style_dynamic"))
    assert {f for f in vars(plain) if getattr(plain, f) != getattr(dynamic, f)} == {"dynamic_sampling"}
    assert "atp_rl_new_style" in SUITES["cpu"].jobs and "atp_rl_new_style" not in SUITES["gpu"].jobs


def test_gain_table_by_hand():
    rows = {"atp": {"accuracy": 0.5, "correct": "1100"}, "atp_rl_cosine": {"accuracy": 0.75, "correct": "1011"},
            "atp_rl_kl": {"accuracy": 0.5, "correct": "1100"}}
    lines = results_mod.gain_table(rows).splitlines()
    assert lines[2] == "| ATP-Latent (SFT) | 50.00 | - | - |"
    assert lines[3] == "| ATP RL, warmup + cosine lr | 75.00 | +25.00 | +2 / -1 |"
    assert lines[4] == "| ATP RL, KL to start 0.1 | 50.00 | +0.00 | +0 / -0 |"


def test_rollout_summary_by_hand():
    # 3 rollouts of 4 problems: right 3, 0, 1 and 2 times
    right = [[1, 0, 1, 1], [1, 0, 0, 1], [1, 0, 0, 0]]
    samples = [[{"correct": bool(c)} for c in row] for row in right]
    got = suite_mod.rollout_summary(samples)
    assert got["n"] == 3
    assert got["accuracy"] == pytest.approx(6 / 12)
    assert got["signal"] == pytest.approx(2 / 4)  # problems 2 and 3: neither all right nor all wrong
    assert got["pass_at_k"]["3"] == pytest.approx(3 / 4)
    # pass@2 per problem: 1, 0, 1 - C(2,2)/C(3,2) = 2/3, 1 - C(1,2)/C(3,2) = 1
    assert got["pass_at_k"]["2"] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)


def test_rollout_table_by_hand():
    def row(acc, ro_acc, passn, signal):
        return {"accuracy": acc, "rollout": {"n": 8, "accuracy": ro_acc, "pass_at_k": {"8": passn}, "signal": signal}}

    rows = [{"atp": row(0.98, 0.96, 0.99, 0.10), "atp_rl": {"accuracy": 0.97}},
            {"atp": row(0.96, 0.94, 0.99, 0.14), "atp_rl": {"accuracy": 0.96}}]
    lines = results_mod.rollout_table(rows).splitlines()
    assert lines[0].startswith("| model | greedy | rollouts: accuracy (pass@1) | pass@8 | groups of 8 with a signal")
    assert len(lines) == 3  # atp_rl has no rollouts: no row
    # means 97, 95, 99, 12; sample std of two values a, b is |a - b| / sqrt(2)
    assert lines[2] == "| ATP-Latent (SFT) | 97.00 ± 1.41 | 95.00 ± 1.41 | 99.00 ± 0.00 | 12.00 ± 2.83 |"
    assert results_mod.rollout_table([{"atp": {"accuracy": 0.9}}]) == ""


def test_evaluate_val_samples_rl_rollouts_and_caches_them(tmp_path, monkeypatch):
    """evaluate_val(rollouts=n): n evaluations with RL's rollout policy (sampled latents, sampled stop, answer
    temperature 1.0), seeds 0..n-1, summarised per problem; cached, and recomputed only when n changes."""
    import types

    from atp_latent.data.formats import write_jsonl
    from atp_latent.evaluation import evaluate as eval_mod

    problems = [Problem(question=f"q{i}", answer=str(i), steps=["1+1=2"] * (2 + i % 2), id=str(i)) for i in range(6)]
    write_jsonl(tmp_path / "data" / "val_large.jsonl", problems)
    (tmp_path / "runs" / "atp" / "final").mkdir(parents=True)
    (tmp_path / "runs" / "atp" / "final" / "reasoner.json").write_text("{}")
    calls = []

    def fake_evaluate(model, builder, probs, *, sample_latents=False, stop_mode="greedy", temperature=0.0, seed=0,
                      **kw):
        calls.append((sample_latents, stop_mode, temperature, seed))
        rollout = sample_latents and stop_mode == "sample"
        assert not rollout or temperature == 1.0
        right = [(i + seed) % 3 != 0 if rollout else True for i in range(len(probs))]
        rows = [{"correct": ok, "latents": 2, "answer_tokens": 3, "pred": "1"} for ok in right]
        return eval_mod.summarize(rows), rows

    monkeypatch.setattr(eval_mod, "evaluate", fake_evaluate)
    monkeypatch.setattr(eval_mod, "load_for_eval",
                        lambda run: (types.SimpleNamespace(spec=types.SimpleNamespace(use_vae=True, method="atp")),
                                     None, None))
    import torch

    (tmp_path / "runs" / "atp" / "best").mkdir()
    torch.save({"progress": {"step": 40}}, tmp_path / "runs" / "atp" / "best" / "trainer_state.pt")
    got = suite_mod.evaluate_val(["atp"], tmp_path, samples=0, split="val_large", rollouts=2)["atp"]
    assert calls == [(False, "greedy", 0.0, 0), (True, "sample", 1.0, 0), (True, "sample", 1.0, 1)]
    assert got["accuracy"] == 1.0 and got["correct"] == "111111" and got["best_step"] == 40
    # the step best/ was saved at is kept in the cache: a run committed without its trainer state still gives it
    (tmp_path / "runs" / "atp" / "best" / "trainer_state.pt").unlink()
    # seed 0 right on problems 1, 2, 4, 5; seed 1 on 0, 1, 3, 4: counts 1, 2, 1, 1, 2, 1
    assert got["rollout"] == {"n": 2, "accuracy": pytest.approx(8 / 12), "pass_at_k": {"1": pytest.approx(8 / 12),
                              "2": pytest.approx(1.0)}, "signal": pytest.approx(4 / 6)}
    calls.clear()
    assert suite_mod.evaluate_val(["atp"], tmp_path, samples=0, split="val_large")["atp"] == got  # cached
    assert suite_mod.evaluate_val(["atp"], tmp_path, samples=0, split="val_large", rollouts=2)["atp"] == got
    assert calls == []
    suite_mod.evaluate_val(["atp"], tmp_path, samples=0, split="val_large", rollouts=3)
    assert [c[3] for c in calls] == [0, 0, 1, 2]


def test_fresh_questions_are_in_distribution_and_unseen(tmp_path):
    """write_fresh: n val-like questions, none in any split nor in val_large, the same file from the same data
    seed; atp_rl_fresh trains on them and is selected on the seed's own val split."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.synthetic import SPLITS, SynthConfig, write_benchmark

    started = {}

    def popen(args, **kw):
        started.update(dict(a.split("=", 1) for a in args if a.startswith("data.")))

    out = tmp_path / "seed-0"
    write_benchmark(out / "data", SynthConfig(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    large = {r.question for r in load_records(suite_mod.write_val_large(out, data_seed=5, n=60))}
    fresh = load_records(suite_mod.write_fresh(out, data_seed=5, n=80))
    questions = {r.question for r in fresh}
    taken = {r.question for s in SPLITS for r in load_records(out / "data" / f"{s}.jsonl")}
    assert len(fresh) == 80 == len(questions) and not questions & (taken | large)
    assert all(2 <= len(r.steps) <= 3 and r.answer for r in fresh)
    again = tmp_path / "again"
    write_benchmark(again / "data", SynthConfig(seed=5, n_train=200, n_val=20, n_test=20, n_ood=20))
    suite_mod.write_val_large(again, data_seed=5, n=60)
    assert suite_mod.write_fresh(again, data_seed=5, n=80).read_bytes() == \
        (out / "data" / "fresh" / "train.jsonl").read_bytes()
    mp = pytest.MonkeyPatch()
    mp.setattr(scheduler_mod.subprocess, "Popen", popen)
    try:
        scheduler_mod._start_job(SUITES["cpu"], "atp_rl_fresh", out, 0, 1.0, [])
    finally:
        mp.undo()
    assert started == {"data.train": str(out / "data" / "fresh" / "train.jsonl"),
                       "data.val": str(out / "data" / "val.jsonl")}
    assert "atp_rl_fresh" in SUITES["cpu"].ablations and STARTS["atp_rl_fresh"] == "atp"
    # the same recipe as atp_rl: only the questions differ
    base, fresh_cfg = (load_config(str(config_path(SUITES["cpu"], j))) for j in ("atp_rl", "atp_rl_fresh"))
    assert (vars(base.rl), vars(base.method), base.train) == (vars(fresh_cfg.rl), vars(fresh_cfg.method), fresh_cfg.train)


def _cells(acc: float, tokens: float, n: int = 100) -> dict:
    """Test-split results right on the first acc x n problems of each split."""
    right = round(acc * n)
    return {s: {"accuracy": acc, "mean_tokens": tokens, "mean_latents": 3.0, "mean_answer_tokens": tokens - 3.0,
                "correct": "1" * right + "0" * (n - right)} for s in suite_mod.TEST_SPLITS}


def _graded(correct: str) -> dict:
    """An evaluate_val row: accuracy and which problems were right."""
    return {"accuracy": correct.count("1") / len(correct), "correct": correct, "mean_tokens": 8.0,
            "mean_latents": 2.5, "by_steps": {}}


# Per seed: RL's best/ ahead of its start on val, where best/ was picked (+1 of 10 problems on every seed, which a
# pick with the start as first candidate gives for free), level with it on the held-out val_large.
VAL = [{"atp": "1111111110", "atp_rl": "1111111111"}, {"atp": "1111111100", "atp_rl": "1111111110"},
       {"atp": "1111111110", "atp_rl": "1111111111"}]
VAL_LARGE = [{"atp": "1" * 18 + "00", "atp_rl": "1" * 18 + "00"},  # 0.90 -> 0.90
             {"atp": "1" * 16 + "0000", "atp_rl": "1" * 17 + "000"},  # 0.80 -> 0.85: +1 / -0
             {"atp": "1" * 17 + "000", "atp_rl": "1" * 16 + "0000"}]  # 0.85 -> 0.80: +0 / -1


def FAKE_DIVERSITY(job: str, k: int) -> dict:
    """A diversity_curves summary over 40 problems: ATP's plans cover 3 of 4 valid orders, CoT's and SIM-CoT's 1
    (at the same validity); No-CoT and Coconut have no readable plan."""
    if job in ("nocot", "coconut", "codi", "icot", "colar"):
        return {"n_problems": 40, "n_rollouts": k, "has_plans": False, "pass_at_k": {"1": 0.5, str(k): 0.6},
                "plan_validity": None, "valid_and_correct": None, "valid_but_wrong": None, "invalid_plan": None,
                "coverage": None, "distinct_correct_orders": None, "order_entropy": None, "kendall_distance": None,
                "strict_pass_at_k": None}
    cov = 0.75 if job.startswith("atp") else 0.25
    return {"n_problems": 40, "n_rollouts": k, "has_plans": True, "pass_at_k": {"1": 0.5, str(k): 0.7},
            "strict_pass_at_k": {"1": 0.4, str(k): 0.6}, "plan_validity": 0.9, "valid_and_correct": 0.5,
            "valid_but_wrong": 0.4, "invalid_plan": 0.1, "coverage": cov, "distinct_correct_orders": 4 * cov,
            "order_entropy": 0.5, "kendall_distance": 0.2, "coverage_at_k": {"1": 0.25, str(k): cov},
            "per_problem": {"coverage": [cov] * 40, "validity": [0.9] * 40}}


@pytest.fixture
def fake_bench(monkeypatch, tmp_path):
    """run_bench with its training, data and evaluation replaced: per seed folder, the test splits give ATP RL a lead
    over SIM-CoT and Coconut at fewer tokens; val and val_large rows come from `rows` (split -> per seed -> job ->
    correct string; a job not listed answers like atp)."""
    import argparse

    from atp_latent.evaluation import report as report_mod
    from atp_latent.evaluation import stats as stats_mod

    # the tables' bootstraps with fewer replicates: these fake outcomes' intervals are far from 0 or exactly 0
    monkeypatch.setattr(stats_mod, "DEFAULT_REPLICATES", 2000)
    calls = {"val_large": [], "evaluate_val": [], "evaluate_seed": []}
    rows = {"val": VAL, "val_large": VAL_LARGE}

    def evaluate_seed(jobs, out, seed):
        calls["evaluate_seed"].append((out.name, tuple(jobs)))
        acc = {"atp_rl": 0.6, "simcot": 0.5, "coconut": 0.4}
        return {j: _cells(acc.get(j, 0.3), 8.0 if j.startswith("atp") else 9.0) for j in jobs}, {j: [2] for j in jobs}

    def evaluate_val(jobs, out, samples=3, batch_size=100, split="val", rollouts=0):
        calls["evaluate_val"].append((split, rollouts, tuple(jobs)))
        per_job = rows[split][int(out.name.split("-")[1])]
        return {j: _graded(per_job.get(j, per_job["atp"])) for j in jobs}

    def write_val_large(out, data_seed=0, n=5000):
        calls["val_large"].append((out.name, n))

    monkeypatch.setattr(suite_mod, "write_data", lambda out, data_seed=0, regime="default": None)
    monkeypatch.setattr(suite_mod, "write_new_style", lambda out, data_seed=0: None)
    monkeypatch.setattr(suite_mod, "write_fresh", lambda out, data_seed=0: None)
    monkeypatch.setattr(suite_mod, "write_val_large", write_val_large)
    monkeypatch.setattr(suite_mod, "train_jobs", lambda *a, **k: 0)
    monkeypatch.setattr(suite_mod, "evaluate_seed", evaluate_seed)
    monkeypatch.setattr(suite_mod, "evaluate_val", evaluate_val)
    for plot in ("plot_accuracy_vs_tokens", "plot_training_curves", "plot_latents"):
        monkeypatch.setattr(report_mod, plot, lambda *a, **k: None)

    def evaluate_diversity(jobs, out, samples=8, split="test", batch_size=100):
        calls.setdefault("diversity", []).append((out.name, samples))
        return {j: FAKE_DIVERSITY(j, samples) for j in jobs}

    monkeypatch.setattr(suite_mod, "evaluate_diversity", evaluate_diversity)
    monkeypatch.setattr(report_mod, "plot_diversity", lambda *a, **k: None)

    def run(suite, seeds, ablations=False, val_large=None, regime="default", jobs=None, claim_seeds=None,
            no_train=False):
        out = tmp_path / suite
        for k in range(max(seeds, claim_seeds or 0, 5 if regime == "many-plans" else 0)):
            (out / f"seed-{k}").mkdir(parents=True, exist_ok=True)
        args = argparse.Namespace(suite=suite, seeds=seeds, out=str(out), data_seed=0, scale=1.0, overrides=[],
                                  slots=2, val_large=val_large, rollouts=None, ablations=ablations, regime=regime,
                                  diversity=None, jobs=jobs, claim_seeds=claim_seeds, no_train=no_train)
        assert suite_mod.run_bench(args) == 0
        return out

    return run, rows, calls


def test_rl_over_start_is_judged_on_held_out_problems_only(fake_bench):
    """The claim's "RL beats its SFT start" uses val_large (no run selected on it), never val, where RL's best/ was
    picked with the start as its first candidate; the val table is labelled as the selection split, with no
    verdict."""
    import json

    run, _, calls = fake_bench
    out = run("cpu", seeds=3)
    res = json.loads((out / "results.json").read_text())
    # val_large: start 0.90 / 0.80 / 0.85 (mean 0.85, sample std 0.05), RL gains 0, +0.05, -0.05 (mean 0)
    rl = res["claim"]["rl_over_start"]
    assert rl["mean_gain"] == pytest.approx(0.0, abs=1e-12) and rl["interval"]["ci_low"] < 0 < rl["interval"]["ci_high"]
    assert rl["holds"] is False and rl["split"] == "val_large"
    # val would have said yes: +0.1 on every seed against a start std of 0.0577
    assert res["rl_vs_start_val"]["atp_rl"]["mean_gain"] == pytest.approx(0.1)
    assert res["rl_vs_start_val"]["held_out"] is False and res["rl_vs_start_val_large"]["held_out"] is True
    assert set(res["claim"]) == {"simcot", "coconut", "rl_over_start", "holds"}
    assert res["claim"]["simcot"]["holds"] and res["claim"]["coconut"]["holds"] and res["claim"]["holds"] is False
    text = (out / "RESULTS.md").read_text()
    claim = text[text.index("## The claim"):]
    assert "on val" not in claim and "on 5000 fresh in-distribution problems" in claim
    assert "(gain in points, paired over every problem and seed, with its 95% interval: +0.00 [" in claim
    # the baselines: RL right on 10 and 20 of every split's 100 problems that SIM-CoT / Coconut miss, losing none
    assert res["claim"]["simcot"]["interval"]["mean_difference"] == pytest.approx(0.1)
    assert res["claim"]["simcot"]["interval"]["ci_low"] > 0 and res["claim"]["coconut"]["interval"]["ci_low"] > 0
    # the val table: every RL row says it was picked there, and none gives a verdict
    val_table = text[text.index("RL against its SFT start on the val split"):text.index("The same on 5000")]
    rl_row = next(line for line in val_table.splitlines() if line.startswith("| ATP-Latent (RL) |"))
    assert "| selection split | +1 / -0, +1 / -0, +1 / -0 |" in rl_row and rl_row.startswith(
        "| ATP-Latent (RL) | 100.0, 90.0, 100.0 | 96.7 ± 5.8 | +10.0, +10.0, +10.0 | +10.0 [")
    assert "| yes |" not in val_table and "| no |" not in val_table
    assert [c[:2] for c in calls["evaluate_val"]] == [("val", 0)] * 3 + [("val_large", 8)] * 3  # 8 rollouts each


def test_gpu_suite_has_a_held_out_split_by_default(fake_bench):
    """bench --suite gpu draws a few hundred held-out problems by default and judges RL on them; with one seed the
    bootstrap resamples its problems alone."""
    import json

    run, rows, calls = fake_bench
    rows["val_large"] = [{"atp": "0001111111", "atp_rl": "1110111111"}]  # +3 / -1 (gain +0.2)
    out = run("gpu", seeds=1)
    (seed, n), = calls["val_large"]
    assert seed == "seed-0" and 200 <= n <= 1000
    # held-out greedy evaluation only: no rollouts, a few seconds on a GPU
    assert [c[:2] for c in calls["evaluate_val"]] == [("val", 0), ("val_large", 0)]
    rl = json.loads((out / "results.json").read_text())["claim"]["rl_over_start"]
    # +3 / -1 of 10 problems: a gain of 20 points that resampling 10 problems easily erases
    assert rl["mean_gain"] == pytest.approx(0.2) and rl["interval"]["ci_low"] <= 0 and rl["holds"] is False
    assert rl["interval"]["n_seeds"] == 1 and rl["interval"]["n_problems"] == 10
    text = (out / "RESULTS.md").read_text()
    held_out = text[text.index("The same on 500"):text.index("## The claim")]
    row = next(line for line in held_out.splitlines() if line.startswith("| ATP-Latent (RL) |"))
    assert row.startswith("| ATP-Latent (RL) | 90.00 | 90.00 ± 0.00 | +20.00 | +20.00 [") and row.endswith(
        "| no | +3 / -1 |")


def test_ablation_rows_picked_on_val_are_labelled(fake_bench):
    """The ablation table is on val: RL runs whose best/ was picked there are labelled as such (their gain over the
    start is judged on val_large only); RL runs picked on other problems and SFT runs are not."""
    run, _, _ = fake_bench
    out = run("cpu", seeds=1, ablations=True)
    text = (out / "RESULTS.md").read_text()
    table = text[text.index("## Ablations"):]
    row = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert row["ATP RL, warmup + cosine lr (best/ picked on this split)"]
    assert row["ATP-Latent (RL) (best/ picked on this split)"]
    assert "ATP-Latent (RL on new-style questions)" in row and "ATP SFT, no KL (beta_kl=0)" in row
    assert "ATP-Latent (SFT)" in row


def rerender_committed(folder: str, tmp_path: Path) -> tuple[Path, dict, dict]:
    """results/FOLDER's results.json and NOTES.md copied into tmp_path and RESULTS.md re-written there by
    write_report, which must give the committed RESULTS.md; returns the committed folder, its results.json and the
    re-written one."""
    committed = Path(__file__).resolve().parents[1] / "results" / folder
    for name in ("results.json", "NOTES.md"):
        shutil.copy(committed / name, tmp_path / name)
    results_mod.write_report(tmp_path)
    assert (tmp_path / "RESULTS.md").read_text().replace(str(tmp_path), f"results/{folder}") == \
        (committed / "RESULTS.md").read_text()
    return (committed, json.loads((committed / "results.json").read_text()),
            json.loads((tmp_path / "results.json").read_text()))


def test_committed_cpu_results_judge_rl_on_held_out_problems(tmp_path):
    """results/cpu/RESULTS.md is what write_report renders from results.json (regenerate with `python -m
    atp_latent.bench_results results/cpu`), every Table-1 row is in it, and its RL verdict rests on val_large alone: gains
    -0.14, -0.02, 0.00 points (49/56, 6/7 and 0/0 problems gained/lost of 5,000), mean -0.05, an interval that holds 0."""
    _, res, rewritten = rerender_committed("cpu", tmp_path)
    assert rewritten == res
    large = res["rl_vs_start_val_large"]
    assert {"icot", "codi", "simcot_codi", "colar", "colar_rl"} <= set(res["mean"])
    assert len(res["per_seed"]) == 3 and len(large["atp_rl"]["gains"]) == 3
    # seed 2's RL never beat its start on val: its best/ is the start, which is why it gained and lost nothing
    assert large["atp_rl"]["best_steps"] == [220, 20, 0] and large["atp_rl"]["gained_lost"][2] == [0, 0]
    gained_lost = large["atp_rl"]["gained_lost"]
    assert gained_lost == [[49, 56], [6, 7], [0, 0]]
    assert large["atp_rl"]["gains"] == pytest.approx([(g - lost) / 5000 for g, lost in gained_lost])
    rl = res["claim"]["rl_over_start"]
    assert rl["split"] == "val_large" and rl["holds"] is False
    assert rl["mean_gain"] == pytest.approx(sum(g - lost for g, lost in gained_lost) / 15000)
    assert rl["interval"]["ci_low"] < 0 < rl["interval"]["ci_high"] and rl["interval"]["n_problems"] == 5000


def test_committed_all_latents_diagnostic_is_of_the_benchs_atp_runs():
    """results/cpu-many-plans/all-latents/: ATP SFT of seeds 0-4 on val_large, greedy and with every slot
    run (eval --all-latents). The greedy files are the bench's own runs (their accuracy, overall and by step count,
    is the seed's cached val_large evaluation), the stop head ends at the step count (mean latents 3.00, 4.00,
    5.00), and running the skipped slots costs accuracy at 3 steps on every seed, as NOTES.md says."""
    folder = Path(__file__).resolve().parents[1] / "results" / "cpu-many-plans"
    three = {False: [], True: []}
    for seed in range(5):
        cached = json.loads((folder / f"seed-{seed}" / "runs" / "atp" / "val_large_eval.json").read_text())["value"]
        for every in (False, True):
            name = f"seed-{seed}-atp{'-all-latents' if every else ''}.json"
            got = json.loads((folder / "all-latents" / name).read_text())
            assert got["all_latents"] is every and got["run"] == "atp"
            val = got["results"]["val_large"]
            by = val["by_steps"]
            assert sum(v["problems"] for v in by.values()) == val["n"] == 5000
            assert val["accuracy"] == pytest.approx(sum(v["accuracy"] * v["problems"] for v in by.values()) / 5000)
            assert [round(v["mean_latents"], 2) for v in by.values()] == ([5.0] * 3 if every else [3.0, 4.0, 5.0])
            three[every].append(100 * by["3"]["accuracy"])
            if not every:
                assert val["accuracy"] == pytest.approx(cached["accuracy"])
                assert {k: v["accuracy"] for k, v in by.items()} == pytest.approx(
                    {k: v["accuracy"] for k, v in cached["by_steps"].items()})
    assert all(a > b for a, b in zip(three[False], three[True]))
    assert [round(sum(v) / 5, 1) for v in (three[False], three[True])] == [70.2, 23.1]
    assert "from 70.2 ± 11.6\n      to 23.1 ± 8.3" in (folder / "NOTES.md").read_text()


def test_committed_no_stop_diagnostic_recounts_from_the_outcomes():
    """results/cpu-many-plans/no-stop/seed-K: ATP SFT trained without its stop head, the seed's ATP run in all else
    (its config differs in the stop head and the run's name and folder only). Each eval file's accuracy by step count
    is the committed per-problem outcomes', and the paired bootstrap over those outcomes against the bench's ATP SFT
    (its cached val_large bits) gives NOTES.md's figures: seed 0's +9.4 [+6.8, +11.9] at 3 steps, seed 1's loss
    there, which does not repeat it, and the five seeds pooled, where the interval holds 0."""
    import yaml

    from atp_latent.evaluation.stats import paired_bootstrap

    folder = Path(__file__).resolve().parents[1] / "results" / "cpu-many-plans"
    steps = [int(c) for c in (folder / "no-stop" / "val_large_steps.txt").read_text().strip()]
    three = [i for i, n in enumerate(steps) if n == 3]
    seeds = sorted(int(p.name.removeprefix("seed-")) for p in (folder / "no-stop").glob("seed-*"))
    assert seeds == [0, 1, 2, 3, 4]
    at_three, pooled = {}, []
    for seed in seeds:
        here = folder / "no-stop" / f"seed-{seed}"
        bits = {name: [int(c) for c in (here / f"{name}val_large_correct.txt").read_text().strip()]
                for name in ("", "simcot_")}
        atp = [int(c) for c in json.loads((folder / f"seed-{seed}" / "runs" / "atp" / "val_large_eval.json")
                                          .read_text())["value"]["correct"]]
        assert len(steps) == len(atp) == len(bits[""]) == len(bits["simcot_"]) == 5000
        cfg, start = (yaml.safe_load(p.read_text()) for p in (here / "config.yaml",
                                                               folder / f"seed-{seed}" / "runs" / "atp" / "config.yaml"))
        assert cfg["method"].pop("use_stop_head") is False and start["method"].pop("use_stop_head") is None
        for key in ("name", "output_dir"):
            cfg.pop(key), start.pop(key)
        assert cfg == start
        for name, file in (("", "val_large_eval.json"), ("simcot_", "simcot_val_large_eval.json")):
            by = json.loads((here / file).read_text())["results"]["val_large"]["by_steps"]
            for k, v in by.items():
                idx = [i for i, n in enumerate(steps) if n == int(k)]
                assert v["problems"] == len(idx)
                assert v["accuracy"] == pytest.approx(sum(bits[name][i] for i in idx) / len(idx))
        r = paired_bootstrap([[bits[""][i] for i in three]], [[atp[i] for i in three]])
        at_three[seed] = [round(100 * x, 1) for x in (r.mean_difference, r.ci_low, r.ci_high)]
        pooled.append((bits[""], atp, bits["simcot_"]))
    assert at_three[0] == [9.4, 6.8, 11.9] and at_three[1][2] < 0  # seed 1: no stop head below ATP at 3 steps
    notes = " ".join((folder / "NOTES.md").read_text().split())
    assert "at 3 steps, no stop head − ATP is {}, {}, {}, {} and {}".format(
        *("{:+.1f} [{:+.1f}, {:+.1f}]".format(*at_three[k]) for k in seeds)) in notes
    # The five seeds pooled (a bootstrap over seeds and problems): no gain shown over ATP, SIM-CoT ahead on the mean.
    import numpy as np

    no_stop, atp, simcot = (np.array([p[m] for p in pooled]) for m in range(3))
    for idx in (three, slice(None)):  # at 3 steps, and over all of val_large
        got = [paired_bootstrap(no_stop[:, idx], other[:, idx]) for other in (atp, simcot)]
        assert got[0].ci_low < 0 < got[0].ci_high and got[1].mean_difference < 0
    r = paired_bootstrap(no_stop[:, three], atp[:, three])
    assert "no stop head − ATP is {:+.1f} [{:+.1f}, {:+.1f}] at 3 steps".format(
        *(100 * x for x in (r.mean_difference, r.ci_low, r.ci_high))) in notes


def test_steps_table_recounts_accuracy_per_step_count():
    """Accuracy by step count from the per-problem bits: problems with steps [3, 3, 4, 5]; seed 0 right on problems
    0 and 2, seed 1 on 0, 1 and 2: 3 steps 50 and 100 (75.0 ± 35.4), 4 steps 100 (100.0 ± 0.0), 5 steps 0; no table
    without step counts or with a row whose bits do not match them."""
    per_seed = [{"atp": {"test": {"correct": "1010"}}}, {"atp": {"test": {"correct": "1110"}}}]
    data = {"mean": {"atp": {}}, "per_seed": per_seed, "steps_per_problem": {"test": [3, 3, 4, 5]}}
    table = results_mod.steps_table(data).splitlines()
    assert table[0] == "| method | 3 steps (2) | 4 steps (1) | 5 steps (1) |"
    assert table[2] == "| ATP-Latent (SFT) | 75.0 ± 35.4 | 100.0 ± 0.0 | 0.0 ± 0.0 |"
    assert results_mod.steps_table({**data, "steps_per_problem": None}) == ""
    assert results_mod.steps_table({**data, "steps_per_problem": {"test": [3, 3, 4]}}) == ""


def test_tables_list_the_references_then_the_latent_baselines_then_atp():
    """Rows in the order a reader compares them, whatever order the runs finished in: CoT-SFT and No-CoT, the latent
    baselines as in the paper's Table 1, ATP and its RL rows; a row the order does not name keeps its place after
    them, and two such rows keep theirs relative to each other."""
    finished = ["atp_rl", "cot_short", "simcot", "colar_rl", "atp", "nocot", "atp_short", "icot", "cot", "codi"]
    rows = jobs_mod.in_display_order({job: k for k, job in enumerate(finished)})
    assert list(rows) == ["cot", "nocot", "icot", "codi", "colar_rl", "simcot", "atp", "atp_rl", "cot_short",
                          "atp_short"]
    assert rows["codi"] == finished.index("codi")  # the values travel with their keys


def test_committed_many_plans_results_judge_the_premise(tmp_path):
    """results/cpu-many-plans/RESULTS.md is what write_report renders from results.json, every claim row has its five
    seeds, and the verdicts NOTES.md states are what the numbers give: (a) ATP SFT behind SIM-CoT on every seed and
    level with Coconut, (b) no more coverage, (c) no RL row above its start on val_large, (d) a smaller gap only
    against CoT-SFT, and only because ATP's `test` is lower. The per-seed differences and the problems gained and
    lost are recounted here from the stored per-problem outcomes, and so are NOTES.md's figures for the Table-1
    baselines (seeds 0-2 only), each behind ATP SFT."""
    committed, res, rewritten = rerender_committed("cpu-many-plans", tmp_path)
    assert res["regime"] == "many-plans" and res["claim_seeds"] == 5
    claim_rows = {"cot", "coconut", "simcot", "atp", "atp_rl", "atp_rl_coherence", "atp_rl_no_coherence"}
    assert set(res["claim_jobs"]) == claim_rows
    assert all(set(r) >= claim_rows for r in res["per_seed"]) and len(res["per_seed"]) == 5
    assert all(len(res["diversity"][j]) == 5 for j in claim_rows)

    def outcomes(r, job):  # a seed's per-problem bits over the four test splits
        return "".join(r[job][s]["correct"] for s in results_mod.TEST_SPLITS)

    def acc(r, job):  # accuracy over the four test splits, recounted from the per-problem bits
        bits = outcomes(r, job)
        return 100 * bits.count("1") / len(bits)

    per_seed = res["per_seed"]
    vs_simcot = [acc(r, "atp") - acc(r, "simcot") for r in per_seed]
    vs_coconut = [acc(r, "atp") - acc(r, "coconut") for r in per_seed]
    assert [round(d, 1) for d in vs_simcot] == [-1.3, -2.4, -2.2, -3.4, -7.6]
    assert [round(d, 1) for d in vs_coconut] == [0.6, -3.5, -5.4, 1.9, -13.2]
    assert res["steps_per_problem"]["test"].count(3) == 168 and len(res["steps_per_problem"]["test"]) == 500
    assert "| SIM-CoT | 83.3 ± 6.4 | 24.0 ± 3.4 | 16.5 ± 1.7 |" in (committed / "RESULTS.md").read_text()
    premise = rewritten["claim"]["premise"]
    assert res["claim"]["premise"] == premise  # the committed file holds what today's rules decide
    a, b, c, d = (premise[k] for k in "abcd")
    assert a["simcot"]["holds"] is False and a["simcot"]["interval"]["ci_high"] < 0  # SIM-CoT ahead
    assert a["coconut"]["holds"] is False and a["coconut"]["interval"]["ci_low"] < 0 < a["coconut"]["interval"]["ci_high"]
    assert a["simcot"]["interval"]["mean_difference"] == pytest.approx(sum(vs_simcot) / 500, abs=1e-9)
    assert a["simcot"]["tokens"] < a["simcot"]["baseline_tokens"]
    assert b["cot"]["holds"] is False and b["cot"]["coverage"]["ci_high"] < 0
    assert b["simcot"]["holds"] is False and b["simcot"]["coverage"]["ci_low"] < 0 < b["simcot"]["coverage"]["ci_high"]
    large = res["rl_vs_start_val_large"]
    assert large["split"] == "val_large" and large["n_problems"] == 5000
    assert set(c) == {"atp_rl", "atp_rl_coherence", "atp_rl_no_coherence"}
    start = large["atp"]["correct"]
    for job in c:
        counted = [[sum(x > y for x, y in zip(rl, st)), sum(x < y for x, y in zip(rl, st))]
                   for rl, st in zip(large[job]["correct"], start)]
        assert large[job]["gained_lost"] == counted and len(counted) == 5
        assert c[job]["holds"] is False and c[job]["interval"]["ci_low"] < 0 < c[job]["interval"]["ci_high"]
        assert c[job]["mean_gain"] == pytest.approx(sum(g - lost for g, lost in counted) / (5 * 5000), abs=1e-12)
    assert d["cot"]["holds"] is True and d["cot"]["ood_difference"]["ci_low"] <= 0  # smaller only as `test` is lower
    assert d["coconut"]["holds"] is False and d["simcot"]["holds"] is False
    # The Table-1 baselines: seeds 0-2 only, each behind ATP SFT over the test splits (paired over those seeds and
    # the problems), with NOTES.md's figures recounted from the per-problem bits.
    baselines = ("nocot", "icot", "codi", "simcot_codi", "colar", "colar_rl")
    assert all(set(baselines) <= set(r) for r in per_seed[:3]) and not any(set(baselines) & set(r) for r in per_seed[3:])
    assert all(res["mean"][j]["test"]["seeds"] == 3 for j in baselines)
    from atp_latent.evaluation.stats import paired_bootstrap

    def figure(a, b):
        r = paired_bootstrap(*([[int(c) for c in outcomes(s, job)] for s in per_seed[:3]] for job in (a, b)))
        return r, "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * x for x in (r.mean_difference, r.ci_low, r.ci_high)))

    notes = " ".join((committed / "NOTES.md").read_text().split())
    for job in baselines:
        r, text = figure("atp", job)
        assert r.ci_low > 0 and f"| {text} |" in notes, job
    for a_job, b_job in (("simcot_codi", "codi"), ("codi", "icot"), ("colar", "nocot"), ("colar_rl", "colar")):
        r, text = figure(a_job, b_job)  # none of these holds either way
        assert r.ci_low < 0 < r.ci_high and text in notes, (a_job, b_job)
    for text in ("-3.9 [-9.0, +0.5]", "-3.4 [-5.8, -1.4]", "-41.5 [-46.6, -36.3]", "-0.1 [-0.9, +0.7]",
                 "-0.10 [-0.61, +0.34]", "-0.22 [-0.91, +0.32]", "-0.18 [-0.52, +0.14]", "-18.5 [-25.0, -12.5]",
                 "-1.9 [-7.0, +2.8]", "-0.4 [-4.1, +2.9]"):
        assert text in notes and text in (committed / "RESULTS.md").read_text()


def test_seed_folders_keep_their_regime(tmp_path):
    """write_data draws the regime's benchmark once; a folder drawn in another regime (or with another data seed)
    is refused in one line; a folder written before a knob existed counts as having had its default."""
    import dataclasses

    from atp_latent.data.formats import load_records
    from atp_latent.data.synthetic import CONFIG_NAME, valid_orders

    small = {"n_train": 60, "n_val": 10, "n_test": 10, "n_ood": 10}
    real = suite_mod.regime_config
    suite_mod.regime_config = lambda regime, data_seed=0: dataclasses.replace(real(regime, data_seed), **small)
    try:
        suite_mod.write_data(tmp_path / "mp", 0, "many-plans")
        assert all(len(valid_orders(p)) >= 2 for p in load_records(tmp_path / "mp" / "data" / "test.jsonl")[:5])
        suite_mod.write_data(tmp_path / "mp", 0, "many-plans")  # kept
        with pytest.raises(ValueError, match="regime 'default'"):
            suite_mod.write_data(tmp_path / "mp", 0, "default")
        suite_mod.write_data(tmp_path / "d", 0, "default")
        with pytest.raises(ValueError, match="other settings"):
            suite_mod.write_data(tmp_path / "d", 1, "default")
        old = json.loads((tmp_path / "d" / "data" / CONFIG_NAME).read_text())
        for knob in ("shapes", "min_orders"):  # as written before these knobs existed
            old.pop(knob)
        (tmp_path / "d" / "data" / CONFIG_NAME).write_text(json.dumps(old))
        suite_mod.write_data(tmp_path / "d", 0, "default")
    finally:
        suite_mod.regime_config = real
    with pytest.raises(ValueError, match="unknown regime 'wild'"):
        suite_mod.regime_config("wild")


def test_many_plans_bench_reports_diversity_and_the_premises_claims(fake_bench):
    """--regime many-plans samples rollouts for the diversity table (8 by default) and RESULTS.md states claims
    (a)-(d), each judged by a paired bootstrap: here ATP's plans cover more orders than CoT's and SIM-CoT's at the
    same validity, so (b) holds; every method has the same accuracy on every split, so the gaps differ by exactly 0
    and (d) does not hold."""
    run, _, calls = fake_bench
    out = run("cpu", seeds=2, regime="many-plans", claim_seeds=3)
    assert calls["diversity"] == [("seed-0", 8), ("seed-1", 8), ("seed-2", 8)]
    res = json.loads((out / "results.json").read_text())
    assert res["regime"] == "many-plans" and "--regime many-plans --claim-seeds 3" in res["command"]
    assert res["diversity"]["atp"][0]["coverage"] == 0.75 and len(res["diversity"]["cot"]) == 3
    assert [d["seed"] for d in res["diversity"]["codi"]] == [0, 1]
    text = (out / "RESULTS.md").read_text()
    assert text.startswith("# CPU benchmark, many-plans regime: every method")
    table = text[text.index("## Reasoning-path diversity"):text.index("## The premise's claims")]
    assert next(line for line in table.splitlines() if line.startswith("| Coconut |")).count("n/a") == 9  # pass@k is not a plan metric
    assert "| ATP-Latent (SFT) | 90.0 ± 0.0 | 50.0 ± 0.0 | 40.0 ± 0.0 | 10.0 ± 0.0 | 0.750 ± 0.000 |" in table
    claims = text[text.index("## The premise's claims"):]
    assert "ATP-Latent (SFT)'s plans cover more valid orders than CoT-SFT's at no lower validity: **holds**" in claims
    assert "SIM-CoT's at no lower validity: **holds** (coverage difference x 100: +50.0 [+50.0, +50.0]" in claims
    assert "OOD gap is smaller than Coconut's: **does not hold** (its gap minus the other's, points: +0.0 [" in claims
    assert "(a) ATP SFT beats Coconut and SIM-CoT" in claims and "(c) RL" in claims
    assert res["claim_seeds"] == 3 and res["claim_jobs"] == ["cot", "atp", "coconut", "simcot", "atp_rl",
                                                             "atp_rl_coherence", "atp_rl_no_coherence"]
    # (c): each RL row against its start on the held-out problems, the accuracy-only RL (an ablation in the default
    # regime) among them
    c = claims[claims.index("(c) RL"):claims.index("(d)")]
    assert [line.split(" beats its SFT start")[0] for line in c.splitlines() if line.startswith("- ")] == \
        ["- ATP-Latent (RL)", "- ATP RL, coherence weight 0", "- ATP-Latent (RL, coherence only)"]


def test_many_plans_claims_say_which_rows_they_lack(fake_bench):
    """A many-plans bench of some jobs only (--jobs atp_rl trains CoT-SFT, ATP SFT and RL): the claims that compare
    rows it did not train say which ones they lack, instead of an empty list; (d) is judged against CoT-SFT alone."""
    run, _, _ = fake_bench
    out = run("cpu", seeds=2, regime="many-plans", jobs=["atp_rl"], claim_seeds=2)
    claims = (out / "RESULTS.md").read_text().split("## The premise's claims in this regime")[1]
    a = claims[claims.index("(a)"):claims.index("(b)")]
    assert a.splitlines()[1] == "- not judged (no results for Coconut, SIM-CoT in this bench)"
    b = claims[claims.index("(b)"):claims.index("(c)")]
    assert [line.split(" than ")[1].split(" at ")[0] for line in b.splitlines() if line.startswith("- ")] == ["CoT-SFT's"]
    d = claims[claims.index("(d)"):]
    assert [line.split(" OOD gap is smaller than ")[1].split(":")[0] for line in d.splitlines()
            if line.startswith("- ")] == ["CoT-SFT's"]


def test_many_plans_bench_gives_the_claim_rows_more_seeds(fake_bench, monkeypatch):
    """--regime many-plans: the rows claims (a)-(d) compare get 5 seeds by default, the others --seeds; seeds past
    --seeds train and evaluate the claim rows alone; means, tables and paired comparisons use the seeds a row (a
    pair) ran; the default regime's own jobs (new-style questions, the short SFT and RL from it) are left out."""
    run, rows, calls = fake_bench
    rows["val"], rows["val_large"] = VAL + VAL[:2], VAL_LARGE + VAL_LARGE[:2]
    trained = []
    monkeypatch.setattr(suite_mod, "train_jobs", lambda suite, tasks, *a, **k: trained.append((tasks, k)) or 0)
    out = run("cpu", seeds=2, regime="many-plans")
    (tasks, kwargs), = trained
    assert len(tasks) == 2 * 13 + 3 * 7  # every job on seeds 0-1, the claim rows on seeds 2-4
    # one latent group per step up to the regime's 5 steps, for the stepwise curriculum at c = 1 only
    assert kwargs["job_sets"] == {j: ["curriculum.max_latent_stage=5"] for j in ("atp", "coconut", "simcot")}
    claims = ("cot", "atp", "coconut", "simcot", "atp_rl", "atp_rl_coherence", "atp_rl_no_coherence")
    evaluated = dict(calls["evaluate_seed"])
    assert list(evaluated) == [f"seed-{k}" for k in range(5)]
    assert evaluated["seed-2"] == evaluated["seed-4"] == claims
    assert {"icot", "codi", "colar", "colar_rl", "nocot", "simcot_codi"} <= set(evaluated["seed-1"])
    assert not {"atp_rl_new_style", "atp_rl_room", "atp_short", "cot_short"} & set(evaluated["seed-0"])
    assert [c[0] for c in calls["evaluate_val"]].count("val_large") == 5  # RL against its start on every seed
    res = json.loads((out / "results.json").read_text())
    assert "--claim-seeds" not in res["command"] and res["claim_seeds"] == 5 and res["seeds"] == 2
    assert len(res["costs"]["atp"]) == 5 and len(res["costs"]["codi"]) == 2
    assert res["mean"]["atp"]["test"]["seeds"] == 5 and res["mean"]["codi"]["test"]["seeds"] == 2
    assert res["claim"]["coconut"]["interval"]["n_seeds"] == 5
    text = (out / "RESULTS.md").read_text()
    assert "mean ± std over 2 seeds, 5 for the rows the claims compare (CoT-SFT, ATP-Latent (SFT)," in text
    table = text[:text.index("Paired comparisons")]
    assert "| seeds |" in table.splitlines()[next(i for i, x in enumerate(table.splitlines()) if x.startswith("| method"))]
    row = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    assert row["CODI"][-3] == "2" and row["ATP-Latent (SFT)"][-3] == "5"
    paired = text[text.index("Paired comparisons"):text.index("## The claim")]
    codi = next(line for line in paired.splitlines() if line.startswith("| ATP-Latent (RL) − CODI |"))
    sim = next(line for line in paired.splitlines() if line.startswith("| ATP-Latent (RL) − SIM-CoT |"))
    assert codi.split(" | ")[-1].count("(seeds: ") == 1 and codi.split("(seeds: ")[-1].count(",") == 1  # 2 seeds
    assert sim.split("(seeds: ")[-1].count(",") == 4  # 5 seeds
    # the default regime has no diversity section and samples nothing
    calls.pop("diversity")
    out = run("gpu", seeds=1)
    assert "diversity" not in calls and "## Reasoning-path diversity" not in (out / "RESULTS.md").read_text()


def test_diversity_curves_by_hand(monkeypatch):
    """One problem with valid orders abc and bac; four rollouts: abc right, abc right, bac right, cba wrong. The first
    k rollouts cover 1/1, 1/2 and 2/2 of min(|V|, k) orders; 3 of 4 plans are valid."""
    from atp_latent.data import synthetic

    monkeypatch.setattr(synthetic, "valid_orders", lambda p: [["a", "b", "c"], ["b", "a", "c"]])
    samples = [[{"plan": ["a", "b", "c"], "correct": True}], [{"plan": ["a", "b", "c"], "correct": True}],
               [{"plan": ["b", "a", "c"], "correct": True}], [{"plan": ["c", "b", "a"], "correct": False}]]
    got = suite_mod.diversity_curves([Problem("q?", ["a", "b", "c"], "1")], samples)
    assert got["coverage_at_k"] == {"1": 1.0, "2": 0.5, "4": 1.0}
    assert got["per_problem"] == {"coverage": [1.0], "validity": [0.75]} and got["n_rollouts"] == 4
    none = suite_mod.diversity_curves([Problem("q?", ["a"], "1")], [[{"plan": None, "correct": True}]] * 2)
    assert not none["has_plans"] and "per_problem" not in none and none["pass_at_k"] == {"1": 1.0, "2": 1.0}


def test_jobs_subset_keeps_what_they_start_from(fake_bench, capsys):
    """bench --jobs: the listed jobs and their starts (transitively), in the suite's phase order; an unknown job is
    refused naming the suite's jobs."""
    sub = jobs_mod.subset(SUITES["cpu"], ["colar_rl", "nocot"])
    assert sub.jobs == ["cot", "nocot", "colar", "colar_rl"]
    assert jobs_mod.with_starts(["atp_rl"]) == ["cot", "atp", "atp_rl"]
    with pytest.raises(ValueError, match="has no job 'magic'"):
        jobs_mod.subset(SUITES["cpu"], ["magic"])
    run, _, _ = fake_bench
    out = run("gpu", seeds=1, jobs=["codi"])
    res = json.loads((out / "results.json").read_text())
    assert set(res["per_seed"][0]) == {"cot", "codi"} and "--jobs codi" in res["command"]


def test_no_train_reports_the_runs_that_have_finished(fake_bench, monkeypatch, tmp_path):
    """bench --no-train: nothing is trained or written into the seed folders; each seed's finished runs are evaluated
    and reported, the tables give each row its own seed count, RL is judged on the seeds that finished it and its
    start, and RESULTS.md says it is partial. A folder with no finished run is refused in one line."""
    run, _, calls = fake_bench
    monkeypatch.setattr(suite_mod, "train_jobs", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setattr(suite_mod, "write_data", lambda *a, **k: pytest.fail("wrote data"))
    monkeypatch.setattr(suite_mod, "write_val_large", lambda *a, **k: pytest.fail("wrote val_large"))
    out = tmp_path / "cpu"
    with pytest.raises(ValueError, match="no run in .* has finished yet"):
        run("cpu", seeds=3, no_train=True)
    finished = {0: ("cot", "nocot", "atp", "coconut", "simcot", "atp_rl", "atp_rl_coherence"), 1: ("cot", "atp")}
    for seed, jobs in finished.items():
        for job in jobs:
            (out / f"seed-{seed}" / "runs" / job / "final").mkdir(parents=True)
            (out / f"seed-{seed}" / "runs" / job / "final" / "reasoner.json").write_text("{}")
    (out / "seed-1" / "runs" / "coconut").mkdir(parents=True)  # started, not finished
    run("cpu", seeds=3, no_train=True)
    assert calls["evaluate_seed"] == [("seed-0", finished[0]), ("seed-1", finished[1])]
    assert {c[0] for c in calls["evaluate_val"]} == {"val", "val_large"} and len(calls["evaluate_val"]) == 2  # seed 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["per_seed"]) == 2 and res["command"].endswith("--no-train")
    assert res["mean"]["atp"]["test"]["seeds"] == 2 and res["mean"]["coconut"]["test"]["seeds"] == 1
    assert set(res["mean"]) == set(finished[0]) and len(res["costs"]["atp"]) == 2 and res["costs"]["codi"] == []
    text = (out / "RESULTS.md").read_text()
    assert "**a partial report**: the 9 runs finished so far of the 51 that the command without --no-train trains" \
        in text and "| seeds |" in text
    # before any RL run has finished, the report says that, not that there are no held-out problems
    for job in ("atp_rl", "atp_rl_coherence"):
        shutil.rmtree(out / "seed-0" / "runs" / job)
    run("cpu", seeds=3, no_train=True)
    text = (out / "RESULTS.md").read_text()
    assert "No RL run with its start has finished yet, so RL is not judged" in text and "--val-large 0" not in text
    # once every run has finished, --no-train gives the command's own report: neither partial nor named --no-train
    for seed in range(3):
        for job in jobs_mod.seed_jobs(SUITES["cpu"], seed, 3):
            (out / f"seed-{seed}" / "runs" / job / "final").mkdir(parents=True, exist_ok=True)
            (out / f"seed-{seed}" / "runs" / job / "final" / "reasoner.json").write_text("{}")
    run("cpu", seeds=3, no_train=True)
    res, text = json.loads((out / "results.json").read_text()), (out / "RESULTS.md").read_text()
    assert len(res["per_seed"]) == 3 and not res["command"].endswith("--no-train")
    assert "partial" not in text and "which trained 0 of the 51 runs and reused the others" in text


def test_regime_gives_the_stepwise_curriculum_a_stage_per_step():
    """regime_sets: under many-plans (up to 5 steps) Coconut, SIM-CoT and ATP SFT (and the ATP ablations) get 5
    latent stages, one group per step, and compose to it; CODI, SIM-CoT on CODI and CoLaR keep their own latent
    counts, RL takes its stages from its start, the text methods have none; the default regime changes nothing."""
    from atp_latent.config import load_config

    suite = jobs_mod.regime_suite(SUITES["cpu"], "many-plans")
    sets = jobs_mod.regime_sets(suite, "many-plans", suite.jobs + list(suite.ablations))
    assert {"atp", "coconut", "simcot", "atp_no_kl", "atp_no_vae"} <= set(sets)
    assert not {"codi", "simcot_codi", "colar", "icot", "cot", "nocot", "atp_rl", "colar_rl"} & set(sets)
    for job, overrides in sets.items():
        cfg = load_config(str(jobs_mod.config_path(suite, job)), overrides)
        assert cfg.curriculum.max_latent_stage == 5 and cfg.method.latents_per_step == 1, job
        assert cfg.train.epochs * cfg.data.epoch_size // cfg.optim.batch_size == 5200, job  # steps unchanged
    assert jobs_mod.regime_sets(SUITES["cpu"], "default", SUITES["cpu"].jobs) == {}


def test_job_sets_reach_their_jobs_only(fake_jobs, tmp_path):
    """train_jobs(job_sets=...): a job's own overrides come before the command line's, and only that job gets them."""
    events, _ = fake_jobs
    s = SUITES["quickstart"]
    train_jobs(s, [(tmp_path, j, 0) for j in s.jobs], extra=["train.threads=1"],
               job_sets={"atp": ["curriculum.max_latent_stage=5"]})
    given = dict(r for kind, r in events if kind == "extra")
    assert given == {j: (["curriculum.max_latent_stage=5"] if j == "atp" else []) + ["train.threads=1"]
                     for j in s.jobs}

