"""`atp-latent compare`: two runs' prediction files, paired by seed and by problem id, judged with the bootstrap."""

import json

import numpy as np
import pytest

from atp_latent.cli import BAD_INPUT, main
from atp_latent.data.records import DataError
from atp_latent.evaluation.compare import (
    ALL_SPLITS,
    compare_bench,
    compare_predictions,
    comparison_lines,
    read_predictions,
)
from atp_latent.evaluation.stats import paired_bootstrap


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rows(correct, steps=None, data="val", sample=0, order=None):
    """One prediction row per problem p0, p1, ...: right or not, optionally its steps, in the given order."""
    order = range(len(correct)) if order is None else order
    return [{"data": data, "sample": sample, "id": f"p{i}", "question": f"q{i}", "correct": bool(correct[i]),
             **({} if steps is None else {"steps": steps[i]})} for i in order]


def test_problems_are_paired_by_id_not_by_line(tmp_path):
    # B's file lists the problems in reverse: paired by position, A - B would be 0 on every problem but one.
    a = write(tmp_path / "a.jsonl", rows([1, 1, 1, 0]))
    b = write(tmp_path / "b.jsonl", rows([1, 1, 0, 0], order=[3, 2, 1, 0]))
    r = compare_predictions([a], [b], n_replicates=2000)["data"]["val"]
    assert (r["accuracy_a"], r["accuracy_b"], r["seeds"], r["problems"]) == (0.75, 0.5, 1, 4)
    assert r["difference"] == pytest.approx(0.25)
    ref = paired_bootstrap([[1, 1, 1, 0]], [[1, 1, 0, 0]], n_replicates=2000)
    assert (r["ci_low"], r["ci_high"], r["p_value"]) == (ref.ci_low, ref.ci_high, ref.p_value)


def test_seeds_are_paired_file_by_file_and_samples_averaged(tmp_path):
    # Seed 0: two samples each. A's problem shares 1, 1/2, 0; B's 0, 1/2, 0. Seed 1: one sample; A 0 1 1, B 0 0 0.
    a0 = write(tmp_path / "a0.jsonl", rows([1, 1, 0]) + rows([1, 0, 0], sample=1))
    b0 = write(tmp_path / "b0.jsonl", rows([0, 0, 0]) + rows([0, 1, 0], sample=1))
    a1 = write(tmp_path / "a1.jsonl", rows([0, 1, 1]))
    b1 = write(tmp_path / "b1.jsonl", rows([0, 0, 0]))
    r = compare_predictions([a0, a1], [b0, b1], n_replicates=2000)["data"]["val"]
    a, b = [[1, 0.5, 0], [0, 1, 1]], [[0, 0.5, 0], [0, 0, 0]]
    assert (r["seeds"], r["problems"]) == (2, 3)
    assert r["accuracy_a"] == pytest.approx(np.mean(a)) and r["accuracy_b"] == pytest.approx(np.mean(b))
    assert r["difference"] == pytest.approx((1 + 0 + 0 + 0 + 1 + 1) / 6)
    ref = paired_bootstrap(a, b, n_replicates=2000)
    assert (r["ci_low"], r["ci_high"]) == (ref.ci_low, ref.ci_high)


def test_by_steps_compares_each_step_count_on_its_own(tmp_path):
    steps = [2, 2, 3, 3, 3, None]
    a = write(tmp_path / "a.jsonl", rows([1, 1, 0, 0, 1, 1], steps))
    b = write(tmp_path / "b.jsonl", rows([0, 1, 0, 1, 1, 0], steps))
    r = compare_predictions([a], [b], by_steps=True, n_replicates=500)["data"]["val"]
    assert r["problems"] == 6 and r["difference"] == pytest.approx(1 / 6)  # the unlabelled problem counts overall
    assert list(r["by_steps"]) == ["2", "3"]  # ... and in no step count
    two, three = r["by_steps"]["2"], r["by_steps"]["3"]
    assert (two["problems"], two["accuracy_a"], two["accuracy_b"], two["difference"]) == (2, 1.0, 0.5, 0.5)
    assert (three["problems"], three["difference"]) == (3, pytest.approx(-1 / 3))


def test_verdict_needs_the_interval_on_the_claimed_side(tmp_path):
    n = 400
    better = write(tmp_path / "a.jsonl", rows([1] * n))
    worse = write(tmp_path / "b.jsonl", rows([i % 2 for i in range(n)]))
    assert compare_predictions([better], [worse])["data"]["val"]["verdict"] == "holds"
    assert compare_predictions([worse], [better])["data"]["val"]["verdict"] == "does not hold"
    assert compare_predictions([worse], [better], claim="A < B")["data"]["val"]["verdict"] == "holds"
    tie = compare_predictions([better], [better])["data"]["val"]
    assert (tie["difference"], tie["verdict"]) == (0.0, "does not hold")


def test_each_data_set_is_compared_on_its_own(tmp_path):
    a = write(tmp_path / "a.jsonl", rows([1, 1], data="x") + rows([0, 0], data="y"))
    b = write(tmp_path / "b.jsonl", rows([0, 0], data="x") + rows([1, 0], data="y"))
    r = compare_predictions([a], [b], n_replicates=200)["data"]
    assert (r["x"]["difference"], r["y"]["difference"]) == (1.0, -0.5)


def test_files_over_other_problems_are_refused_naming_the_file(tmp_path):
    a = write(tmp_path / "a.jsonl", rows([1, 0, 1]))
    b = write(tmp_path / "b.jsonl", rows([1, 0]))
    with pytest.raises(DataError, match=r"b\.jsonl: id: has no problem 'p2' of 'val'"):
        compare_predictions([a], [b])
    other = write(tmp_path / "c.jsonl", rows([1, 0, 1], data="test"))
    with pytest.raises(DataError, match=r"c\.jsonl: data: has no problems of 'val'"):
        compare_predictions([a], [other])
    relabelled = write(tmp_path / "d.jsonl", rows([1, 0, 1], steps=[2, 2, 4]))
    with pytest.raises(DataError, match=r"steps: problem 'p0' of 'val' has None steps"):
        compare_predictions([relabelled], [a])
    with pytest.raises(ValueError, match="same number of files"):
        compare_predictions([a, a], [a])


@pytest.mark.parametrize("line, where", [
    ("not json", "2: line: not JSON"),
    ('{"data": "val", "id": "p9"}', "2: correct: missing"),
    ('{"data": "val", "id": "p9", "correct": 1}', "2: correct: expected true or false"),
    ('{"data": "val", "id": 9, "correct": true}', "2: id: expected a string"),
    ('{"data": "val", "id": "p0", "correct": true}', "2: id: problem 'p0' of 'val' appears twice"),
    ('{"data": "val", "id": "p9", "correct": true, "sample": -1}', "2: sample: expected an integer >= 0"),
])
def test_a_bad_line_is_named_by_file_line_and_field(tmp_path, line, where):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rows([1])[0]) + "\n" + line + "\n")
    with pytest.raises(DataError) as e:
        read_predictions(path)
    assert str(e.value).startswith(f"{path}:{where}")


def test_cli_prints_the_lines_and_writes_the_json(tmp_path, capsys):
    steps = [2, 3, 3, 2]
    a = write(tmp_path / "a.predictions.jsonl", rows([1, 1, 1, 0], steps))
    b = write(tmp_path / "b.predictions.jsonl", rows([0, 1, 0, 0], steps))
    out = tmp_path / "cmp" / "c.json"
    assert main(["compare", "--a", a, "--b", b, "--name-a", "ATP", "--name-b", "SIM-CoT", "--by-steps",
                 "--replicates", "300", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["name_a"] == "ATP" and saved["data"]["val"]["difference"] == 0.5
    assert comparison_lines(saved, "ATP", "SIM-CoT") == text.splitlines()[:3]
    assert text.splitlines()[0].startswith("val: ATP 75.0% vs SIM-CoT 25.0% (1 seed x 4 problems): ATP - SIM-CoT "
                                           "+50.0 points [")
    assert text.splitlines()[1].startswith("  2 steps: ATP 50.0% vs SIM-CoT 0.0%")


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", rows([1, 0]))
    assert main(["compare", "--a", a, "--a", a, "--b", a]) == BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "same number of files" in err
    assert main(["compare", "--a", a, "--b", str(tmp_path / "missing.jsonl")]) == BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'missing.jsonl'}: file: cannot read it")
    assert main(["compare", "--a", a, "--b", a, "--confidence", "95"]) == BAD_INPUT
    assert "--confidence must be between 0 and 1" in capsys.readouterr().err


def bench_folder(tmp_path):
    """A bench's results.json: job x on three seeds, y on two (a baseline trained on fewer seeds), two splits."""
    per_seed = [{"x": {"test": {"correct": "1100"}, "ood": {"correct": "10"}},
                 "y": {"test": {"correct": "1000"}, "ood": {"correct": "00"}}},
                {"x": {"test": {"correct": "1110"}, "ood": {"correct": "11"}},
                 "y": {"test": {"correct": "0110"}, "ood": {"correct": "01"}}},
                {"x": {"test": {"correct": "0000"}, "ood": {"correct": "00"}}}]
    (tmp_path / "results.json").write_text(json.dumps({"splits": ["test", "ood"], "per_seed": per_seed,
                                                       "steps_per_problem": {"test": [3, 3, 4, 4]}}))
    return tmp_path


def test_bench_jobs_are_compared_on_the_seeds_both_ran(tmp_path):
    r = compare_bench(bench_folder(tmp_path), "x", "y", by_steps=True, n_replicates=500)
    assert r["seeds"] == [0, 1]  # seed 2 has no y: left out, not paired with anything
    test, ood, pooled = (r["data"][k] for k in ("test", "ood", ALL_SPLITS))
    assert (test["seeds"], test["problems"], test["accuracy_a"], test["accuracy_b"]) == (2, 4, 5 / 8, 3 / 8)
    assert test["difference"] == pytest.approx(2 / 8) and ood["difference"] == pytest.approx(2 / 4)
    assert pooled["problems"] == 6 and pooled["difference"] == pytest.approx(4 / 12)
    ref = paired_bootstrap([[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 1, 1]], [[1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 1]],
                           n_replicates=500)
    assert (pooled["ci_low"], pooled["ci_high"]) == (ref.ci_low, ref.ci_high)
    assert {k: v["difference"] for k, v in test["by_steps"].items()} == {"3": 0.5, "4": 0.0}  # x 4/4 vs y 2/4; 1/4 vs 1/4
    assert "by_steps" not in ood  # the bench stored no step counts for it
    only = compare_bench(tmp_path, "x", "y", splits=["ood"], n_replicates=100)["data"]
    assert list(only) == ["ood"]  # one split: nothing to pool


def test_bench_held_out_split_is_rl_against_its_start_and_never_pooled(tmp_path):
    folder = bench_folder(tmp_path)
    res = json.loads((folder / "results.json").read_text())
    res["rl_vs_start_val_large"] = {"split": "val_large", "n_problems": 3,
                                    "x": {"correct": ["110", "111", "000"]}, "y": {"correct": ["100", "011", "001"]}}
    (folder / "results.json").write_text(json.dumps(res))
    r = compare_bench(folder, "x", "y", splits=["test", "val_large", "ood"], n_replicates=200)["data"]
    assert list(r) == ["test", "val_large", "ood", ALL_SPLITS]
    # its own seeds (all three stored), and the pooled row holds the test splits only (6 problems, not 9)
    assert (r["val_large"]["seeds"], r["val_large"]["difference"]) == (3, pytest.approx((1 + 1 - 1) / 9))
    assert r[ALL_SPLITS]["problems"] == 6
    assert "val_large" not in compare_bench(folder, "x", "y", n_replicates=50)["data"]  # only when asked for
    res["rl_vs_start_val_large"].pop("y")
    (folder / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="has val_large outcomes for x only"):
        compare_bench(folder, "x", "y", splits=["val_large"])


def test_bench_bad_job_or_split_or_folder_is_one_line(tmp_path, capsys):
    folder = bench_folder(tmp_path)
    with pytest.raises(ValueError, match="has no job 'z'; its jobs: x, y"):
        compare_bench(folder, "x", "z")
    with pytest.raises(ValueError, match="has no split 'val'; its splits: test, ood"):
        compare_bench(folder, "x", "y", splits=["val"])
    res = json.loads((folder / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**res, "steps_per_problem": {"test": [3, 4]}}))
    with pytest.raises(DataError, match="steps_per_problem: 'test' has 2 step counts for 4 problems"):
        compare_bench(folder, "x", "y", by_steps=True)
    assert main(["compare", "--bench", str(tmp_path / "nothing"), "--a", "x", "--b", "y"]) == BAD_INPUT
    assert "results.json: file: cannot read it: is this a bench folder" in capsys.readouterr().err
    assert main(["compare", "--bench", str(folder), "--a", "x", "--a", "y", "--b", "y"]) == BAD_INPUT
    assert "name one job each" in capsys.readouterr().err
    assert main(["compare", "--a", "f", "--b", "g", "--split", "test"]) == BAD_INPUT
    assert "--split picks a bench's test splits; it needs --bench" in capsys.readouterr().err


def test_bench_comparison_is_the_benchs_own_claim_interval():
    """Independent of compare_bench: the committed many-plans bench judged claim (a) against SIM-CoT in suite's
    claim code; the pooled comparison of the same two jobs gives the same interval to the digit."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "results" / "cpu-many-plans"
    claim = json.loads((folder / "results.json").read_text())["claim"]["premise"]["a"]["simcot"]["interval"]
    got = compare_bench(folder, "atp", "simcot")["data"][ALL_SPLITS]
    assert (got["seeds"], got["problems"]) == (claim["n_seeds"], claim["n_problems"]) == (5, 2000)
    assert [got[k] for k in ("difference", "ci_low", "ci_high", "p_value")] == [
        claim[k] for k in ("mean_difference", "ci_low", "ci_high", "p_value")]
    # claim (c): RL against its start on the held-out problems
    rl = json.loads((folder / "results.json").read_text())["claim"]["premise"]["c"]["atp_rl"]["interval"]
    got = compare_bench(folder, "atp_rl", "atp", splits=["val_large"])["data"]["val_large"]
    assert (got["seeds"], got["problems"]) == (rl["n_seeds"], rl["n_problems"]) == (5, 5000)
    assert [got[k] for k in ("difference", "ci_low", "ci_high", "p_value")] == [
        rl[k] for k in ("mean_difference", "ci_low", "ci_high", "p_value")]


def test_cli_bench_mode_names_rows_by_job(tmp_path, capsys):
    assert main(["compare", "--bench", str(bench_folder(tmp_path)), "--a", "x", "--b", "y", "--split", "test",
                 "--replicates", "100"]) == 0
    assert capsys.readouterr().out.startswith("test: x 62.5% vs y 37.5% (2 seeds x 4 problems): x - y +25.0 points [")
