"""Bench tables and plots from hand-made results."""

import json

import pytest

from atp_latent.evaluation.report import (
    aggregate,
    plot_accuracy_vs_tokens,
    plot_latents,
    plot_training_curves,
    results_table,
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
