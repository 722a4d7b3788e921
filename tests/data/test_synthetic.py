import json
import re

import pytest

from atp_latent.data import (
    SPLITS,
    Problem,
    SynthConfig,
    evaluate_expression,
    generate_benchmark,
    load_records,
    parse_equation,
    valid_orders,
    write_benchmark,
)

SMALL = dict(n_train=200, n_val=30, n_test=40, n_ood=40)


@pytest.fixture(scope="module")
def bench() -> dict[str, list[Problem]]:
    return generate_benchmark(SynthConfig(**SMALL))


def test_split_sizes_ids_sources(bench):
    assert list(bench) == list(SPLITS)
    for split, ps in bench.items():
        assert len(ps) == (SMALL[f"n_{split}"] if f"n_{split}" in SMALL else SMALL["n_ood"])
        assert [p.id for p in ps] == [f"{split}-{i}" for i in range(len(ps))]
        assert {p.source for p in ps} == {f"synthetic/{split}"}


def check_order(problem: Problem, order: list[str]) -> None:
    """Every step is arithmetically right, uses only stated numbers or earlier results, ends in the answer."""
    known = {float(x) for x in re.findall(r"\d+", problem.question)}
    for step in order:
        expr, result = parse_equation(step)
        assert evaluate_expression(expr) == float(result), step
        assert {float(x) for x in re.findall(r"\d+", expr)} <= known, (step, problem.question)
        known.add(float(result))
    assert float(parse_equation(order[-1])[1]) == float(problem.answer)


def test_orders_valid_and_own_order_listed(bench):
    for ps in bench.values():
        for p in ps:
            orders = valid_orders(p)
            assert p.steps in orders
            for order in orders:
                assert sorted(order) == sorted(p.steps)
                check_order(p, order)


def test_step_format_and_bounds(bench):
    cfg = SynthConfig(**SMALL)
    for split, ps in bench.items():
        max_operand, max_value = (
            (cfg.large_max_operand, cfg.large_max_value)
            if split == "test_large"
            else (cfg.max_operand, cfg.max_value)
        )
        for p in ps:
            assert re.fullmatch(r"\d+", p.answer)
            stated = [int(x) for x in re.findall(r"\d+", p.question)]
            assert all(1 <= x <= max_operand for x in stated)
            for step in p.steps:
                assert re.fullmatch(r"\d+[-+*/]\d+=\d+", step), step
                assert 0 <= int(parse_equation(step)[1]) <= max_value
        if split == "test_large":  # really larger: some stated number above the normal range
            assert all(max(int(x) for x in re.findall(r"\d+", p.question)) > cfg.max_operand for p in ps)


def test_step_counts(bench):
    cfg = SynthConfig(**SMALL)
    train_max = max(len(p.steps) for p in bench["train"])
    assert {len(p.steps) for p in bench["train"]} <= set(range(cfg.min_steps, cfg.max_steps + 1))
    assert min(len(p.steps) for p in bench["test_long"]) > train_max


def test_splits_disjoint(bench):
    questions = [p.question for ps in bench.values() for p in ps]
    assert len(questions) == len(set(questions))


def test_several_orders_and_shuffled_operands():
    ps = generate_benchmark(SynthConfig(**SMALL))["train"]
    assert sum(len(valid_orders(p)) > 1 for p in ps) > len(ps) // 4  # trees, not only chains
    # commutative operands appear in both orders across the data (randomised in the step string)
    plus = [tuple(map(int, re.match(r"(\d+)\+(\d+)", s).groups())) for p in ps for s in p.steps if "+" in s]
    assert any(a < b for a, b in plus) and any(a > b for a, b in plus)


def test_perturbed_looks_perturbed(bench):
    # a distractor sentence adds a stated number that no step uses
    def unused_numbers(p: Problem) -> bool:
        used = {x for s in p.steps for x in re.findall(r"\d+", parse_equation(s)[0])}
        return bool(set(re.findall(r"\d+", p.question)) - used)

    assert any(unused_numbers(p) for p in bench["test_perturbed"])
    assert not any(unused_numbers(p) for p in bench["test"])


def test_valid_orders_two_independent_steps():
    p = Problem("Ann has 3 bags of 4 pens. Bob has 5 red and 6 blue pens. How many more?", [], "1")
    p.steps = ["5+6=11", "3*4=12", "12-11=1"]
    assert sorted(valid_orders(p)) == sorted(
        [["3*4=12", "5+6=11", "12-11=1"], ["5+6=11", "3*4=12", "12-11=1"]]
    )
    assert valid_orders(Problem("No numbers here", ["3*4=12"], "12")) == []
    assert valid_orders(Problem("3 and 4", ["3*4=12"], "13")) == []  # wrong final answer


def test_deterministic_files(tmp_path):
    cfg = SynthConfig(n_train=50, n_val=10, n_test=10, n_ood=10, seed=3)
    a, b = write_benchmark(tmp_path / "a", cfg), write_benchmark(tmp_path / "b", cfg)
    assert set(a) == set(SPLITS)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert len(load_records(a[split])) == (50 if split == "train" else 10)
    assert json.loads((tmp_path / "a" / "synth_config.json").read_text())["seed"] == 3
    c = write_benchmark(tmp_path / "c", SynthConfig(n_train=50, n_val=10, n_test=10, n_ood=10, seed=4))
    assert c["test"].read_bytes() != a["test"].read_bytes()
    assert load_records(a["test"]) == generate_benchmark(cfg)["test"]


def test_config_presets_and_validation():
    hard = SynthConfig.hard(n_train=100, n_val=10, n_test=10, n_ood=10)
    assert (hard.max_operand, hard.max_value) == (20, 200)
    ps = generate_benchmark(hard)["train"]
    assert max(int(x) for p in ps for x in re.findall(r"\d+", p.question)) > 9
    assert all(int(parse_equation(s)[1]) <= 200 for p in ps for s in p.steps)
    with pytest.raises(ValueError):
        SynthConfig(max_steps=5, long_min_steps=5)
    with pytest.raises(ValueError):
        SynthConfig(max_operand=99, large_max_operand=99)
