"""Bench tables and plots from hand-made results."""

import json

import pytest

from atp_latent.evaluation.report import (
    aggregate,
    claim_verdict,
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
    assert lines[2] == "| CoT-SFT − atp | +30.0 ± 0.0 (2/2 seeds; +30.0, +30.0) | +30.0 ± 14.1 (2/2 seeds; +20.0, +40.0) |"


def test_run_cost_and_cost_columns(tmp_path):
    rows = [{"step": 10, "train/loss": 1.0}, {"step": 10, "eval/val_accuracy": 0.5},
            {"step": 20, "eval/val_accuracy": 0.75}, {"step": 30, "eval/val_accuracy": 0.6},
            {"step": 30, "train/finished": 1, "train/minutes": 2.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    # a run from before scheduled steps were logged is not flagged
    assert run_cost(tmp_path) == {"steps": 30, "minutes": 2.5, "best_step": 20, "scheduled_steps": None,
                                  "stopped_early": False}
    assert run_cost(tmp_path / "missing") == {"steps": None, "minutes": None, "best_step": None,
                                              "scheduled_steps": None, "stopped_early": False}
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
                             "stopped_early": True}
    assert stopped_early_note({"CoT-SFT": full}) == ""
    note = stopped_early_note({"CoT-SFT": full, "Coconut": cut})
    assert "Coconut (250 of 400 steps)" in note and "CoT-SFT" not in note and note.startswith("**Warning")


def held_out(summary: dict) -> dict:
    """A rl_vs_start_table summary of problems no run selected on."""
    return {"split": "val_large", "held_out": True, **summary}


def test_claim_verdict_by_hand():
    # mean over splits a, b per seed: cot 0.4 / 0.6 at 46 tokens, atp 0.15 / 0.25 at 8.5 tokens
    rl = held_out({"atp": {"std": 0.02}, "cot": {"mean_gain": 0.03, "gains": [0.02, 0.04]}})
    text, facts = claim_verdict(PER_SEED, ["a", "b"], {"cot": "CoT"}, method="cot", baselines=("atp",),
                                start="atp", rl_vs_start=rl, where="40 held-out problems")
    # cot is ahead on both seeds (+25, +35) but spends more tokens (46 vs 8.5): the claim fails on tokens
    assert facts["atp"]["diffs"] == pytest.approx([0.25, 0.35]) and facts["atp"]["tokens"] == pytest.approx(46)
    assert not facts["atp"]["holds"] and facts["rl_over_start"]["holds"] and facts["holds"] is False
    assert "+25.0, +35.0 points" in text and "46.0 vs 8.5" in text and text.startswith(
        "The claim as a whole: **does not hold**")
    assert ("CoT beats its SFT start on 40 held-out problems: **holds** (mean gain +3.00 points against a "
            "seed-to-seed std of the start of 2.00)") in text
    # atp against cot: fewer tokens, behind on every seed; its gain over a start equal to the start's std fails too
    rl = held_out({"cot": {"std": 0.05}, "atp": {"mean_gain": 0.05, "gains": [0.05, 0.05]}})
    _, facts = claim_verdict(PER_SEED, ["a", "b"], {}, method="atp", baselines=("cot", "absent"), start="cot",
                             rl_vs_start=rl)
    assert set(facts) == {"cot", "rl_over_start", "holds"}  # a baseline that did not run is left out
    assert not facts["cot"]["holds"] and not facts["rl_over_start"]["holds"]  # gain must exceed the std
    # ahead on every seed at no more tokens, and a held-out gain above the start's std: holds
    per_seed = [{"x": {"a": cell(0.6, 8, 3)}, "y": {"a": cell(0.5, 8, 3)}},
                {"x": {"a": cell(0.55, 8, 3)}, "y": {"a": cell(0.5, 9, 3)}}]
    rl = held_out({"x": {"mean_gain": 0.03, "gains": [0.02, 0.04]}, "s": {"std": 0.01}})
    text, facts = claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=rl)
    assert facts["holds"] is True and text.startswith("The claim as a whole: **holds**")
    assert facts["rl_over_start"] == {"split": "val_large", "mean_gain": 0.03, "start_std": 0.01, "holds": True}


def test_rl_over_start_needs_held_out_problems():
    """RL against its start is never judged on the split its best/ was picked on: such a summary is refused, and
    without a held-out one that part is "not judged" and the claim as a whole is not decided."""
    per_seed = [{"x": {"a": cell(0.6, 8, 3)}, "y": {"a": cell(0.5, 8, 3)}},
                {"x": {"a": cell(0.55, 8, 3)}, "y": {"a": cell(0.5, 9, 3)}}]
    picked_on = {"split": "val", "held_out": False, "x": {"mean_gain": 0.03, "gains": [0.02, 0.04]},
                 "s": {"std": 0.01}}
    with pytest.raises(ValueError, match="held-out problems only, not on 'val'"):
        claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=picked_on)
    with pytest.raises(ValueError, match="held-out"):  # a summary that does not say is not taken as held out
        claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s",
                      rl_vs_start={k: v for k, v in picked_on.items() if k != "held_out"})
    text, facts = claim_verdict(per_seed, ["a"], {"x": "X"}, method="x", baselines=("y",), start="s")
    assert set(facts) == {"y", "holds"} and facts["y"]["holds"] and facts["holds"] is None
    assert text.startswith("The claim as a whole: **not decided** here (RL against its start was not judged).")
    assert "- X beats its SFT start: **not judged** (no held-out problems" in text
    # a part that fails decides the whole even when RL's is not judged
    per_seed[1]["x"]["a"] = cell(0.45, 8, 3)
    assert claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s")[1]["holds"] is False


def test_one_seed_is_judged_by_a_sign_test_on_the_held_out_flips():
    """One seed has no seed-to-seed std, and "gain > 0" would pass a single flipped problem: the bar is then a
    one-sided sign test over the held-out problems the two answer differently, p < 0.05."""
    per_seed = [{"x": {"a": cell(0.6, 8, 3)}, "y": {"a": cell(0.5, 8, 3)}}]

    def verdict(gained, lost):
        rl = held_out({"x": {"mean_gain": (gained - lost) / 500, "gains": [(gained - lost) / 500],
                             "gained_lost": [(gained, lost)]}, "s": {"std": 0.0}})
        return claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=rl,
                             where="500 held-out problems")

    text, facts = verdict(3, 1)  # P(>= 3 of 4 fair flips) = 5 / 16
    assert facts["rl_over_start"]["sign_p"] == pytest.approx(5 / 16) and not facts["rl_over_start"]["holds"]
    assert "gain +0.40 points, +3 / -1 problems, p = 0.31" in text and not facts["holds"]
    _, facts = verdict(5, 0)  # 1 / 32
    assert facts["rl_over_start"]["sign_p"] == pytest.approx(1 / 32) and facts["rl_over_start"]["holds"]
    assert facts["holds"] is True
    _, facts = verdict(9, 3)  # (C(12,9) + C(12,10) + C(12,11) + C(12,12)) / 4096 = 299 / 4096 = 0.073
    assert facts["rl_over_start"]["sign_p"] == pytest.approx(299 / 4096) and not facts["rl_over_start"]["holds"]
    rl = held_out({"x": {"mean_gain": 0.01, "gains": [0.01]}, "s": {"std": 0.0}})  # no per-problem results
    text, facts = claim_verdict(per_seed, ["a"], {}, method="x", baselines=("y",), start="s", rl_vs_start=rl)
    assert "rl_over_start" not in facts and "**not judged** (one seed and no per-problem results)" in text
