"""Bench tables and plots from hand-made results."""

import json

import pytest

from atp_latent.evaluation.report import (
    aggregate,
    claim_verdict,
    compute_summary,
    paired_comparison,
    paired_table,
    plot_accuracy_vs_tokens,
    plot_latents,
    plot_training_curves,
    results_table,
    run_cost,
    stopped_early_note,
)


def cell(acc, tok, lat):
    return {"accuracy": acc, "mean_tokens": tok, "mean_latents": lat, "mean_answer_tokens": tok - lat}


PER_SEED = [
    {"cot": {"a": cell(0.5, 40, 0), "b": cell(0.3, 50, 0)}, "atp": {"a": cell(0.2, 8, 3), "b": cell(0.1, 9, 4)}},
    {"cot": {"a": cell(0.7, 42, 0), "b": cell(0.5, 52, 0)}, "atp": {"a": cell(0.4, 8, 3), "b": cell(0.1, 9, 4)}},
]


def test_aggregate_mean_and_std():
    agg = aggregate(PER_SEED)
    assert agg["cot"]["a"]["accuracy"] == pytest.approx(0.6)
    assert agg["cot"]["a"]["accuracy_std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of 0.5, 0.7
    assert agg["atp"]["b"]["accuracy_std"] == 0.0
    table = results_table(agg, PER_SEED, ["a", "b"], {"cot": "CoT-SFT"})
    row = next(line for line in table.splitlines() if line.startswith("| CoT-SFT"))
    # mean over splits per seed: 0.4 and 0.6 -> 50.0 ± 14.1
    assert "50.0 ± 14.1" in row and "| 46.0 |" in row


def test_plots_are_written(tmp_path):
    from PIL import Image

    agg = aggregate(PER_SEED)
    plot_accuracy_vs_tokens(agg, PER_SEED, ["a", "b"], {}, tmp_path / "acc.png")
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": i, "train/loss": 1 / i} for i in range(1, 5)] + [{"step": 4, "eval/val_accuracy": 0.5}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    plot_training_curves({"cot": [run], "atp": [tmp_path / "missing"]}, {}, tmp_path / "curves.png")
    plot_latents({"atp": [3, 4, 4, 2], "cot": [0, 0]}, {}, tmp_path / "lat.png")
    for name in ("acc.png", "curves.png", "lat.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_training_curves_name_the_seeds(tmp_path, monkeypatch):
    """Each seed's colour is named once, in a spare panel, or below the panels when none is spare."""
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "close", lambda fig: shown.append(fig))
    runs = []
    for seed in range(2):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        rows = [{"step": i, "train/loss": (seed + 1) / i} for i in range(1, 5)] + [{"step": 4, "eval/val_accuracy": 0.5}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        runs.append(run)
    plot_training_curves({"cot": runs, "atp": runs[:1]}, {}, tmp_path / "curves.png")
    spare = shown[0].axes[2]  # 4 panels a row, 2 used: the first spare (twin axes come after the grid)
    assert [t.get_text() for t in spare.get_legend().get_texts()] == ["seed 0", "seed 1"]
    plot_training_curves({f"m{i}": runs for i in range(4)}, {}, tmp_path / "full.png")
    assert [t.get_text() for t in shown[1].legends[0].get_texts()] == ["seed 0", "seed 1"]


def test_diversity_plot_draws_coverage_pass_at_k_and_strict_pass_at_k(tmp_path, monkeypatch):
    """One colour per method on both panels (coverage, pass@K); the strict pass@K dashed in the method's colour, for
    a method with plans only; means over seeds, in %."""
    import matplotlib.pyplot as plt

    from atp_latent.evaluation.report import plot_diversity

    def summary(p1, p2, s1, s2, plans=True):
        return {"pass_at_k": {"1": p1, "2": p2}, "strict_pass_at_k": {"1": s1, "2": s2} if plans else None,
                "coverage_at_k": {"1": 0.5, "2": 0.75} if plans else None}

    div = {"atp": [summary(0.4, 0.6, 0.2, 0.4), summary(0.6, 0.8, 0.4, 0.6)],
           "coconut": [summary(0.5, 0.7, None, None, plans=False)]}
    shown = []
    monkeypatch.setattr(plt, "close", lambda fig: shown.append(fig))
    plot_diversity(div, {"atp": "ATP"}, tmp_path / "div.png")
    (fig,) = shown
    cov, passk = fig.axes
    atp, strict, coconut = passk.lines
    assert list(atp.get_ydata()) == pytest.approx([50.0, 70.0]) and list(strict.get_ydata()) == pytest.approx([30, 50])
    assert strict.get_linestyle() == "--" and strict.get_color() == atp.get_color() != coconut.get_color()
    assert [line.get_color() for line in cov.lines] == [atp.get_color()] and (tmp_path / "div.png").stat().st_size > 1000
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ATP", "coconut"]
    # the bench's 13 rows: 13 colours, none shared
    shown.clear()
    plot_diversity({f"m{i}": div["atp"] for i in range(13)}, {}, tmp_path / "div13.png")
    assert len({line.get_color() for line in shown[0].axes[1].lines[::2]}) == 13


def test_latents_plot_rows_shares_and_means(tmp_path, monkeypatch):
    """One row per method that uses latents; each cell the % of problems with that count; the row's mean beside."""
    import matplotlib.pyplot as plt

    from atp_latent.evaluation.report import plot_latents

    shown = []
    monkeypatch.setattr(plt, "close", lambda fig: shown.append(fig))
    plot_latents({"atp": [3, 4, 4, 3], "cot": [0, 0], "colar": [2, 6]}, {"atp": "ATP"}, tmp_path / "lat.png")
    ax = shown[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ATP", "colar"]
    cells = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts
             if not t.get_text().startswith("mean")}
    assert cells == {(3, 0): "50", (4, 0): "50", (2, 1): "50", (6, 1): "50"}
    assert [t.get_text() for t in ax.texts if t.get_text().startswith("mean")] == ["mean 3.5", "mean 4.0"]


def test_paired_comparison_by_hand():
    # atp - cot on split a: 0.2 - 0.5 = -0.3 and 0.4 - 0.7 = -0.3; on b: 0.1 - 0.3 = -0.2, 0.1 - 0.5 = -0.4
    c = paired_comparison(PER_SEED, "atp", "cot", "a")
    assert c["diffs"] == pytest.approx([-0.3, -0.3]) and c["mean"] == pytest.approx(-0.3)
    assert c["std"] == pytest.approx(0.0, abs=1e-12) and c["wins"] == 0 and c["seeds"] == 2
    c = paired_comparison(PER_SEED, "cot", "atp", "b")
    assert c["mean"] == pytest.approx(0.3) and c["std"] == pytest.approx(0.1414213, rel=1e-5) and c["wins"] == 2
    table = paired_table(PER_SEED, [("cot", "atp"), ("cot", "missing")], ["a", "b"], {"cot": "CoT-SFT"})
    lines = table.splitlines()
    assert len(lines) == 3  # a pair with a method that did not run is left out
    # without per-problem outcomes: the seeds' mean ± std, marked; the last column over both splits (+25, +35)
    assert lines[2] == ("| CoT-SFT − atp | +30.0 ± 0.0 (seeds: +30.0, +30.0; no per-problem outcomes: no interval) | "
                        "+30.0 ± 14.1 (seeds: +20.0, +40.0; no per-problem outcomes: no interval) | "
                        "+30.0 ± 7.1 (seeds: +25.0, +35.0; no per-problem outcomes: no interval) |")
    # with them: the bootstrap interval over problems and seeds; identical answers give exactly [0, 0]
    per_seed = [{"p": {"a": right("1100")}, "q": {"a": right("1100")}}]
    assert paired_table(per_seed, [("p", "q")], ["a"], {}).splitlines()[2] == (
        "| p − q | +0.0 [+0.0, +0.0], p = 1 (seeds: +0.0) | +0.0 [+0.0, +0.0], p = 1 (seeds: +0.0) |")


def test_run_cost_and_cost_columns(tmp_path):
    rows = [{"step": 10, "train/loss": 1.0}, {"step": 10, "eval/val_accuracy": 0.5},
            {"step": 20, "eval/val_accuracy": 0.75}, {"step": 30, "eval/val_accuracy": 0.6},
            {"step": 30, "train/finished": 1, "train/minutes": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    # a run from before scheduled steps were logged is not flagged
    assert run_cost(tmp_path) == {"steps": 30, "minutes": 2.5, "best_step": 20, "scheduled_steps": None,
                                  "stopped_early": False, "commit": None, "dirty": None, "versions": None,
                                  "hardware": None}
    assert run_cost(tmp_path / "missing") == {"steps": None, "minutes": None, "best_step": None,
                                              "scheduled_steps": None, "stopped_early": False, "commit": None,
                                              "dirty": None, "versions": None, "hardware": None}
    (tmp_path / "environment.json").write_text(json.dumps({"git": {"commit": "abcdef0123", "dirty": False}}))
    assert run_cost(tmp_path)["commit"] == "abcdef0123"
    # the compute line: every run's minutes summed, the commits they ran
    costs = {"cot": [run_cost(tmp_path), {"minutes": 57.5, "commit": "1234567890", "dirty": True}],
             "atp": {"minutes": None}}
    assert compute_summary(costs) == "3 runs, 1.0 h of training wall time in all (summed over jobs that ran side by side), " \
        "commit 1234567+dirty, abcdef0"
    # the library versions each run trained under (environment.json): named once, and flagged when they differ
    (tmp_path / "environment.json").write_text(json.dumps({"git": {"commit": "abcdef0123", "dirty": False},
                                                           "packages": {"torch": "2.13.0", "transformers": "5.25.0",
                                                                        "accelerate": "1.16.0"}}))
    assert run_cost(tmp_path)["versions"] == "torch 2.13.0, transformers 5.25.0"
    costs = {"cot": [run_cost(tmp_path), run_cost(tmp_path)]}
    assert compute_summary(costs).endswith("commit abcdef0; torch 2.13.0, transformers 5.25.0")
    costs["atp"] = [run_cost(tmp_path) | {"versions": "torch 2.13.0, transformers 5.24.0"}]
    assert compute_summary(costs).endswith("; **runs trained under different library versions**: torch 2.13.0, "
                                           "transformers 5.24.0; torch 2.13.0, transformers 5.25.0")
    # and the hardware: a GPU's name, else the CPU's with the instruction set torch's kernels use
    (tmp_path / "environment.json").write_text(json.dumps({"hardware": {"cpu": "AMD EPYC", "cpu_capability": "AVX2",
                                                                        "gpu": None}}))
    assert run_cost(tmp_path)["hardware"] == "AMD EPYC (AVX2)"
    (tmp_path / "environment.json").write_text(json.dumps({"hardware": {"cpu": "AMD EPYC", "gpu": "NVIDIA H200"}}))
    assert run_cost(tmp_path)["hardware"] == "NVIDIA H200"
    epyc = {"minutes": 1.0, "hardware": "AMD EPYC (AVX2)"}
    assert compute_summary({"cot": [epyc, epyc]}).endswith("; on AMD EPYC (AVX2)")
    assert compute_summary({"cot": [epyc, {"minutes": 1.0}]}).endswith(
        "; on AMD EPYC (AVX2) (1 runs from before the hardware was recorded)")
    assert compute_summary({"cot": [epyc, epyc | {"hardware": "Intel Xeon (AVX512)"}]}).endswith(
        "; **runs trained on different hardware**: AMD EPYC (AVX2); Intel Xeon (AVX512)")
    costs = {"cot": [{"steps": 30, "minutes": 2.0}, {"steps": 30, "minutes": 4.0}], "atp": [{"steps": None}]}
    table = results_table(aggregate(PER_SEED), PER_SEED, ["a", "b"], {"cot": "CoT-SFT"}, costs)
    assert table.splitlines()[0].endswith("| train steps | train min |")
    assert next(r for r in table.splitlines() if r.startswith("| CoT-SFT")).endswith("| 30 | 3 |")
    assert next(r for r in table.splitlines() if r.startswith("| atp")).endswith("| - | - |")


def test_runs_cut_by_the_safety_stop_are_named(tmp_path):
    def run(name, step, scheduled):
        (tmp_path / name).mkdir()
        rows = [{"step": step, "eval/val_accuracy": 0.5},
                {"step": step, "train/finished": 1, "train/minutes": 1.0, "train/scheduled_steps": scheduled}]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        return tmp_path / name

    full, cut = run("full", 400, 400), run("cut", 250, 400)
    assert run_cost(full)["stopped_early"] is False
    assert run_cost(cut) == {"steps": 250, "minutes": 1.0, "best_step": 250, "scheduled_steps": 400,
                             "stopped_early": True, "commit": None, "dirty": None, "versions": None,
                             "hardware": None}
    assert stopped_early_note({"CoT-SFT": full}) == ""
    note = stopped_early_note({"CoT-SFT": full, "Coconut": cut})
    assert "Coconut (250 of 400 steps)" in note and "CoT-SFT" not in note and note.startswith("**Warning")


def held_out(summary: dict) -> dict:
    """A rl_vs_start_table summary of problems no run selected on."""
    return {"split": "val_large", "held_out": True, **summary}


def right(pattern: str, tok=8, lat=3):
    """A result cell whose problems are right where `pattern` has a 1."""
    return {**cell(pattern.count("1") / len(pattern), tok, lat), "correct": pattern}


def rl_summary(rl: list[str], start: list[str]) -> dict:
    """A held-out rl_vs_start_table summary of RL ("x") and its start ("s") with their per-problem outcomes."""
    acc = [p.count("1") / len(p) for p in rl]
    acc_s = [p.count("1") / len(p) for p in start]
    gains = [a - b for a, b in zip(acc, acc_s)]
    return held_out({"n_problems": len(rl[0]), "s": {"per_seed": acc_s, "std": 0.0, "correct": start},
                     "x": {"per_seed": acc, "gains": gains, "mean_gain": sum(gains) / len(gains), "correct": rl}})


def test_claim_verdict_by_hand():
    """A part holds only when the paired bootstrap interval over problems and seeds lies above 0 (and, against a
    baseline, at no more tokens); without per-problem outcomes it is not judged."""
    # x right on 20 problems per seed that y misses, nothing lost: every replicate is +10 points or more
    x = [right("1" * 20 + "0" * 180), right("1" * 30 + "0" * 170)]
    y = [right("0" * 200, tok=9), right("0" * 200)]
    per_seed = [{"x": {"a": x[k]}, "y": {"a": y[k]}} for k in range(2)]
    rl = rl_summary(["1" * 12 + "0" * 88] * 2, ["0" * 100] * 2)
    text, facts = claim_verdict(per_seed, ["a"], {"x": "X"}, method="x", baselines=("y",), start="s",
                                rl_vs_start=rl, where="100 held-out problems")
    assert facts["y"]["interval"]["mean_difference"] == pytest.approx(0.125)  # (20 + 30) / 400
    assert facts["y"]["interval"]["ci_low"] > 0 and facts["y"]["holds"] and facts["holds"] is True
    assert facts["rl_over_start"]["mean_gain"] == pytest.approx(0.12) and facts["rl_over_start"]["holds"]
    assert text.startswith("The claim as a whole: **holds**") and "+12.5 [" in text and "p < 1e-04" in text
    assert "X beats its SFT start on 100 held-out problems: **holds** (gain in points, paired over every problem " \
        "and seed, with its 95% interval: +12.00 [" in text
    # the same accuracies at more tokens than the baseline: fails on tokens
    per_seed[0]["x"]["a"] = right("1" * 20 + "0" * 180, tok=20)
    _, facts = claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=rl)
    assert facts["y"]["interval"]["ci_low"] > 0 and not facts["y"]["holds"] and facts["holds"] is False
    # identical answers: the interval is [0, 0], which does not exclude 0
    same = [{"x": {"a": right("1100")}, "y": {"a": right("1100")}}]
    _, facts = claim_verdict(same, ["a"], {}, method="x", baselines=("y",), start="s",
                             rl_vs_start=rl_summary(["1100"], ["1100"]))
    assert facts["y"]["interval"]["ci_low"] == facts["y"]["interval"]["ci_high"] == 0
    assert not facts["y"]["holds"] and not facts["rl_over_start"]["holds"] and facts["holds"] is False
    # an RL run whose best/ is its start on every seed says so; one that moved on any seed does not
    never = rl_summary(["1100"] * 2, ["1100"] * 2)
    never["x"]["best_steps"] = [0, 0]
    text, _ = claim_verdict(same, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=never)
    assert "; on every seed its `best/` is the start itself: RL never beat it on val)" in text
    never["x"]["best_steps"] = [0, 20]
    text, _ = claim_verdict(same, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=never)
    assert "never beat it" not in text
    # ahead on the mean but by one problem of ten: the interval holds 0, so the part does not hold
    one = [{"x": {"a": right("1" + "0" * 9)}, "y": {"a": right("0" * 10)}}]
    _, facts = claim_verdict(one, ["a"], {}, method="x", baselines=("y",), start="s")
    assert facts["y"]["interval"]["mean_difference"] == pytest.approx(0.1) and facts["y"]["interval"]["ci_low"] <= 0
    assert facts["y"]["holds"] is False
    # the problems of every split count: level on split a, right on all of b where y is wrong on all: 4 / 8
    two = [{"x": {"a": right("1100"), "b": right("1111")}, "y": {"a": right("1100"), "b": right("0000")}}]
    _, facts = claim_verdict(two, ["a", "b"], {}, method="x", baselines=("y",), start="s")
    assert facts["y"]["interval"]["mean_difference"] == pytest.approx(0.5)
    assert facts["y"]["interval"]["n_problems"] == 8
    # ahead on every seed but without per-problem outcomes (an older results file): not judged
    text, facts = claim_verdict(PER_SEED, ["a", "b"], {"cot": "CoT"}, method="cot", baselines=("atp",), start="atp")
    assert facts["atp"]["holds"] is None and facts["atp"]["diffs"] == pytest.approx([0.25, 0.35])
    assert facts["holds"] is None and "**not judged** (accuracy over the test splits, no per-problem outcomes" in text


def test_rl_over_start_needs_held_out_problems():
    """RL against its start is never judged on the split its best/ was picked on: such a summary is refused, and
    without a held-out one that part is "not judged" and the claim as a whole is not decided."""
    per_seed = [{"x": {"a": cell(0.6, 8, 3)}, "y": {"a": cell(0.5, 8, 3)}},
                {"x": {"a": cell(0.55, 8, 3)}, "y": {"a": cell(0.5, 9, 3)}}]
    picked_on = {"split": "val", "held_out": False, "x": {"mean_gain": 0.03, "gains": [0.02, 0.04]},
                 "s": {"std": 0.01}}
    per_seed = [{"x": {"a": right("1" * 10)}, "y": {"a": right("0" * 10)}},
                {"x": {"a": right("1" * 10)}, "y": {"a": right("0" * 10, tok=9)}}]
    with pytest.raises(ValueError, match="held-out problems only, not on 'val'"):
        claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=picked_on)
    with pytest.raises(ValueError, match="held-out"):  # a summary that does not say is not taken as held out
        claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s",
                      rl_vs_start={k: v for k, v in picked_on.items() if k != "held_out"})
    text, facts = claim_verdict(per_seed, ["a"], {"x": "X"}, method="x", baselines=("y",), start="s")
    assert set(facts) == {"y", "holds"} and facts["y"]["holds"] is True and facts["holds"] is None
    assert text.startswith("The claim as a whole: **not decided** here (a part of it was not judged).")
    assert "- X beats its SFT start: **not judged** (it and its start have no results on held-out problems" in text
    # a part that fails decides the whole even when RL's is not judged
    per_seed = [{"x": {"a": right("1000")}, "y": {"a": right("1000")}}]
    assert claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s")[1]["holds"] is False


def test_one_seed_is_judged_by_the_interval_over_its_problems():
    """One seed: the bootstrap resamples the problems alone. A few flips either way leave 0 inside the interval;
    a large net gain does not. An older summary with only each seed's gained / lost counts is judged on the
    differences rebuilt from them (the line says so)."""
    per_seed = [{"x": {"a": right("1" * 6 + "0" * 4)}, "y": {"a": right("1" * 5 + "0" * 5)}}]

    def verdict(gained, lost, n=500, counts_only=False):
        rl = "1" * gained + "0" * lost + "0" * (n - gained - lost)
        start = "0" * gained + "1" * lost + "0" * (n - gained - lost)
        summary = rl_summary([rl], [start])
        if counts_only:
            for k in ("s", "x"):
                summary[k].pop("correct")
            summary["x"]["gained_lost"] = [(gained, lost)]
        return claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=summary,
                             where=f"{n} held-out problems")

    text, facts = verdict(3, 1)
    assert facts["rl_over_start"]["mean_gain"] == pytest.approx(2 / 500) and not facts["rl_over_start"]["holds"]
    assert facts["rl_over_start"]["interval"]["ci_low"] <= 0 < facts["rl_over_start"]["interval"]["ci_high"]
    _, facts = verdict(30, 2)
    assert facts["rl_over_start"]["interval"]["ci_low"] > 0 and facts["rl_over_start"]["holds"]
    text, facts = verdict(30, 2, counts_only=True)
    assert facts["rl_over_start"]["holds"] and "rebuilt from each seed's problems gained and lost" in text
    assert facts["rl_over_start"]["mean_gain"] == pytest.approx(28 / 500)
    summary = rl_summary(["1" * 30 + "0" * 470], ["0" * 500])
    for k in ("s", "x"):
        summary[k].pop("correct")
    text, facts = claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=summary)
    assert "rl_over_start" not in facts and "**not judged** (no per-problem results)" in text


def test_ood_gap_claim_gives_what_the_gaps_are_made_of():
    """A gap shrinks when in-distribution accuracy falls as surely as when OOD accuracy rises, so the claim line
    gives both parts: here ATP's gap (50 - 25) is smaller than CoT's (75 - 25) only because its `test` accuracy is
    lower, and the line says so."""
    from atp_latent.evaluation.report import ood_gap_claim

    def rows(test, ood):
        return {"test": {"correct": test}} | {s: {"correct": ood} for s in ("test_large", "test_long", "test_perturbed")}

    per_seed = [{"atp": rows("1100", "1000"), "cot": rows("1110", "1000")}] * 2
    lines, facts = ood_gap_claim(per_seed, {"atp": "ATP", "cot": "CoT"}, "atp", ("cot",))
    assert facts["cot"]["accuracy"] == {"in": {"method": 50.0, "other": 75.0}, "ood": {"method": 25.0, "other": 25.0}}
    assert facts["cot"]["interval"]["mean_difference"] == pytest.approx(-0.25)
    assert "; gaps 25.0 and 50.0: `test` 50.0 and 75.0, OOD 25.0 and 25.0; OOD accuracy difference" in lines[0]
    assert facts["cot"]["ood_difference"]["mean_difference"] == 0

    # 100 problems a split: the smaller gap holds; with equal OOD accuracy the line says it comes from `test` alone,
    # with a higher OOD accuracy (shown by its own paired interval) it does not
    per_seed = [{"atp": rows("1" * 40 + "0" * 60, "0" * 100), "cot": rows("1" * 80 + "0" * 20, "0" * 100)}] * 2
    lines, facts = ood_gap_claim(per_seed, {"atp": "ATP", "cot": "CoT"}, "atp", ("cot",))
    assert facts["cot"]["holds"] and facts["cot"]["ood_difference"]["ci_low"] == 0
    assert lines[0].endswith("The gap is smaller only because ATP's `test` accuracy is lower: its OOD accuracy is not "
                             "shown higher.")
    per_seed = [{"atp": rows("1" * 80 + "0" * 20, "1" * 60 + "0" * 40),
                 "cot": rows("1" * 80 + "0" * 20, "1" * 10 + "0" * 90)}] * 2
    lines, facts = ood_gap_claim(per_seed, {"atp": "ATP", "cot": "CoT"}, "atp", ("cot",))
    assert facts["cot"]["holds"] and facts["cot"]["ood_difference"]["mean_difference"] == pytest.approx(0.5)
    assert facts["cot"]["ood_difference"]["ci_low"] > 0 and "only because" not in lines[0]
