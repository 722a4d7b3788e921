import dataclasses
import json
import re
from collections import Counter

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
from atp_latent.data.synthetic import NAMES, OBJECTS, STYLES

# the default regime without irrelevant sentences in the in-distribution splits (noise_prob has its own test)
SMALL = dict(n_train=200, n_val=30, n_test=40, n_ood=40, noise_prob=0.0)
NUM = re.compile(r"\d+")


@pytest.fixture(scope="module", params=STYLES)
def style(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bench(style) -> dict[str, list[Problem]]:
    return generate_benchmark(SynthConfig(**SMALL, style=style))


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


def test_step_format_and_bounds(bench, style):
    cfg = SynthConfig(**SMALL, style=style)
    for split, ps in bench.items():
        max_operand, max_value = (
            (cfg.large_max_operand, cfg.large_max_value)
            if split == "test_large"
            else (cfg.max_operand, cfg.max_value)
        )
        for p in ps:
            assert re.fullmatch(r"\d+", p.answer)
            stated = [int(x) for x in re.findall(r"\d+", p.question)]
            assert all(1 <= x <= max(max_operand, cfg.max_start) for x in stated)
            for step in p.steps:
                assert re.fullmatch(r"\d+[-+*/]\d+=\d+", step), step
                assert 0 <= int(parse_equation(step)[1]) <= max_value
        if split == "test_large":  # really larger: some stated number above the normal range
            assert all(max(int(x) for x in re.findall(r"\d+", p.question)) > cfg.max_operand for p in ps)


def n_sentences(p: Problem) -> int:
    return len(re.findall(r"[.?]", p.question))


def test_step_counts(bench, style):
    cfg = SynthConfig(**SMALL, style=style)
    train_max = max(len(p.steps) for p in bench["train"])
    assert {len(p.steps) for p in bench["train"]} <= set(range(cfg.min_steps, cfg.max_steps + 1))
    # the default test_long: the deepest training problems, with long_noise irrelevant sentences, so every
    # question is longer than any training question with as many steps
    assert {len(p.steps) for p in bench["test_long"]} == {train_max}
    longest = max(n_sentences(p) for p in bench["train"] if len(p.steps) == train_max)
    assert min(n_sentences(p) for p in bench["test_long"]) == longest + cfg.long_noise
    # with more steps instead (and no extra sentences)
    more = generate_benchmark(SynthConfig(**SMALL, style=style, long_min_steps=4, long_max_steps=5, long_noise=0))
    assert min(len(p.steps) for p in more["test_long"]) > train_max
    assert all(p.steps in valid_orders(p) for p in more["test_long"])


def test_splits_disjoint(bench):
    questions = [p.question for ps in bench.values() for p in ps]
    assert len(questions) == len(set(questions))


def test_several_orders_and_shuffled_operands(bench):
    ps = bench["train"]
    assert sum(len(valid_orders(p)) > 1 for p in ps) > len(ps) // 8  # trees, not only chains
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


@pytest.mark.parametrize("style", STYLES)
def test_deterministic_files(tmp_path, style):
    cfg = SynthConfig(n_train=50, n_val=10, n_test=10, n_ood=10, seed=3, style=style)
    a, b = write_benchmark(tmp_path / "a", cfg), write_benchmark(tmp_path / "b", cfg)
    assert set(a) == set(SPLITS)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
        assert len(load_records(a[split])) == (50 if split == "train" else 10)
    saved = json.loads((tmp_path / "a" / "synth_config.json").read_text())
    assert (saved["seed"], saved["style"]) == (3, style)
    assert SynthConfig(**saved) == cfg
    c = write_benchmark(tmp_path / "c", dataclasses.replace(cfg, seed=4))
    assert c["test"].read_bytes() != a["test"].read_bytes()
    assert load_records(a["test"]) == generate_benchmark(cfg)["test"]


@pytest.mark.parametrize("style", STYLES)
def test_config_presets_and_validation(style):
    assert SynthConfig().style == "phrases" == SynthConfig.hard().style
    hard = SynthConfig.hard(n_train=100, n_val=10, n_test=10, n_ood=10, style=style)
    assert (hard.max_operand, hard.max_value) == (50, 500)
    ps = generate_benchmark(hard)["train"]
    assert max(int(x) for p in ps for x in re.findall(r"\d+", p.question)) > 20
    assert all(int(parse_equation(s)[1]) <= 500 for p in ps for s in p.steps)
    with pytest.raises(ValueError, match="long"):
        SynthConfig(max_steps=5, long_min_steps=4, long_max_steps=6)
    with pytest.raises(ValueError, match="longer than any training question"):
        SynthConfig(max_steps=3, long_min_steps=3, long_max_steps=3, long_noise=1)
    with pytest.raises(ValueError):
        SynthConfig(max_operand=99, large_max_operand=99)
    with pytest.raises(ValueError, match="style"):
        SynthConfig(style="verbose")


# -----------------------------------------------------------------------------
# "phrases" style: numbers sit in the sentence of the step that uses them, one person per step

NOUNS = {form: i for i, obj in enumerate(OBJECTS) for form in obj}
ALT_MARKERS = re.compile(  # wordings of the paraphrase templates, which only test_perturbed may use
    r"\bowns\b|gave \d+ away|shared among|\bdoes\.|has divided by|have together|has times what|What is the number"
)


@pytest.fixture(scope="module")
def phrases(bench, style) -> dict[str, list[Problem]]:
    if style != "phrases":
        pytest.skip("phrases style only")
    return bench


def sentences(question: str) -> tuple[list[str], str]:
    """(statement sentences, final question)."""
    parts = re.findall(r"[^.?]+[.?]", question)
    return [x.strip() for x in parts[:-1]], parts[-1].strip()


def main_object(question: str) -> int:
    m = re.search(r"How many (\w+) does|number of (\w+) that", question)
    return NOUNS[m.group(1) or m.group(2)]


def distractor_sentences(question: str) -> list[str]:
    """Sentences about some other object than the one asked about (only distractors do that)."""
    main = main_object(question)
    statements, _ = sentences(question)
    return [x for x in statements if any(NOUNS.get(w, main) != main for w in re.findall(r"\w+", x))]


def names_in(text: str) -> list[str]:
    return [w for w in re.findall(r"\b[A-Z][a-z]+\b", text) if w in NAMES]


def test_phrases_steps_are_local(phrases):
    for split, ps in phrases.items():
        for p in ps:
            statements, final = sentences(p.question)
            extra = distractor_sentences(p.question)
            allowed = {"test_perturbed": 1, "test_long": SynthConfig().long_noise}.get(split, 0)
            assert len(extra) <= allowed, p.question
            for x in extra:  # "{spare name} has {n} {other objects}."
                assert re.fullmatch(r"[A-Z][a-z]+ has \d+ \w+\.", x), x
            steps_text = [x for x in statements if x not in extra]
            # one person per step (+1 for a distractor), each the subject of exactly one sentence
            assert len(set(names_in(p.question))) == len(p.steps) + len(extra), p.question
            assert len(steps_text) == len(p.steps)
            subjects = [names_in(x)[0] for x in steps_text]
            assert all(x.startswith(s) for x, s in zip(steps_text, subjects))
            assert len(set(subjects)) == len(subjects)
            # sentences in a dependency order: a sentence only refers to people introduced before it,
            # and the question asks about the last one (the root step), whom nobody refers to
            for i, x in enumerate(steps_text):
                assert set(names_in(x)[1:]) <= set(subjects[:i]), p.question
            assert names_in(final) == [subjects[-1]]
            # every stated number belongs to the sentence of the step that uses it
            known: list[int] = []
            for step in p.steps:
                expr, result = parse_equation(step)
                leaf = Counter(int(x) for x in NUM.findall(expr)) - Counter(known)
                assert any(not leaf - Counter(int(x) for x in NUM.findall(x)) for x in steps_text), (
                    step,
                    p.question,
                )
                known.append(int(result))
            # ... and the stated numbers are exactly the leaf operands of the tree
            operands = Counter(int(x) for s in p.steps for x in NUM.findall(parse_equation(s)[0]))
            results = Counter(int(parse_equation(s)[1]) for s in p.steps[:-1])
            stated = Counter(int(x) for x in NUM.findall(" ".join(steps_text)))
            assert operands - results == stated, p.question


def test_phrases_perturbed_split(phrases):
    perturbed = phrases["test_perturbed"]
    assert not any(
        ALT_MARKERS.search(p.question) for s, ps in phrases.items() if s != "test_perturbed" for p in ps
    )
    assert any(ALT_MARKERS.search(p.question) for p in perturbed)  # paraphrased
    assert any(distractor_sentences(p.question) for p in perturbed)  # with a distractor
    # the default perturbs every question both ways; with lower chances some are only reordered
    assert all(ALT_MARKERS.search(p.question) and distractor_sentences(p.question) for p in perturbed)
    mild = generate_benchmark(SynthConfig(**SMALL, distractor_prob=0.5, paraphrase_prob=0.5))["test_perturbed"]
    assert any(not ALT_MARKERS.search(p.question) and not distractor_sentences(p.question) for p in mild)
    assert any(ALT_MARKERS.search(p.question) for p in mild) and any(distractor_sentences(p.question) for p in mild)
    # the named style's fact sentences never appear: stated numbers are only inside step sentences
    for ps in phrases.values():
        for p in ps:
            statements, _ = sentences(p.question)
            facts = [x for x in statements if re.fullmatch(r"[A-Z][a-z]+ (has|owns|keeps) \d+ \w+\.", x)]
            assert facts == distractor_sentences(p.question)


@pytest.mark.parametrize("style", STYLES)
def test_perturbation_always_changes_the_text(style):
    import random

    from atp_latent.data import synthetic

    cfg = SynthConfig(style=style)
    perturb = synthetic._perturb_named if style == "named" else synthetic._perturb_phrases
    rng = random.Random(0)
    for _ in range(300):
        d = synthetic._draft(style, rng.randint(1, 4), cfg.max_operand, cfg.max_value, rng)
        plain = d.question()
        assert perturb(d, cfg, rng) != plain
        assert d.question() == plain  # the draft itself is left as it was


def test_noise_sentence_in_every_split_but_perturbed(style):
    """noise_prob: about that share of the questions of each split (test_perturbed keeps its own perturbations)
    carry one irrelevant sentence; it names nobody in the steps and every valid order still holds."""
    clean = generate_benchmark(SynthConfig(**SMALL, style=style))
    noisy = generate_benchmark(SynthConfig(**{**SMALL, "noise_prob": 0.5}, style=style))
    for split in SPLITS:
        if split in ("test_perturbed", "test_long"):
            continue
        n_sent = [len(re.findall(r"[.?]", p.question)) for p in noisy[split]]
        # one more sentence than a clean question with the same number of steps would have
        per_steps = {len(p.steps): len(re.findall(r"[.?]", p.question)) for p in clean[split]}
        extra = [n - per_steps[len(p.steps)] for n, p in zip(n_sent, noisy[split]) if len(p.steps) in per_steps]
        assert set(extra) <= {0, 1}
        assert 0.3 < sum(extra) / len(extra) < 0.7, (split, sum(extra), len(extra))
        for p in noisy[split]:
            assert p.steps in valid_orders(p)
    assert all(len(re.findall(r"[.?]", p.question)) == len(p.steps) + 1 for p in clean["train"]) or style == "named"


def _in_text_order(p: Problem) -> bool:
    """Each step's stated numbers (operands that are no earlier result) are written in the step's own sentence."""
    sentences = [s for s in re.split(r"(?<=[.?]) ", p.question) if not s.endswith("?")]
    sentences = [s for s in sentences if not re.fullmatch(r"\w+ has \d+ \w+\.", s)]  # distractors
    results: set[str] = set()
    for k, step in enumerate(p.steps):
        expr, result = parse_equation(step)
        stated = [x for x in NUM.findall(expr) if x not in results]
        if any(x not in NUM.findall(sentences[k]) for x in stated):
            return False
        results.add(result)
    return True


def test_text_order_puts_steps_in_sentence_order():
    kw = dict(SMALL, style="phrases", noise_prob=0.3)
    ordered = generate_benchmark(SynthConfig(**kw, text_order=True))
    free = generate_benchmark(SynthConfig(**kw, text_order=False))
    for split in ("train", "val", "test", "test_large", "test_long"):
        assert all(_in_text_order(p) for p in ordered[split]), split
        assert all(p.steps in valid_orders(p) and len(valid_orders(p)) >= 1 for p in ordered[split])
    # without it the recorded order often differs from the text's; with it, problems still have other orders
    assert sum(not _in_text_order(p) for p in free["train"]) > 20
    assert sum(len(valid_orders(p)) > 1 for p in ordered["train"]) > 30


def test_max_start_widens_only_what_a_step_starts_from():
    import random

    from atp_latent.data import synthetic

    rng, seen_big = random.Random(0), 0
    for _ in range(400):
        root = synthetic._tree(rng.randint(1, 4), 20, 99, rng, need_large=0, max_start=99)
        for leaf in root.leaves():
            assert 1 <= leaf.value <= (99 if leaf.start else 20)
            seen_big += leaf.value > 20
        for node in root.inner():  # a start leaf is the left operand of '-' or '/'
            assert not node.right.start and (not node.left.start or node.op in ("-", "/"))
    assert seen_big > 50
    # test_large: some operand that is not a starting number lies above max_operand
    cfg = SynthConfig(**SMALL, max_operand=20, max_start=99, max_value=99, large_max_operand=99,
                      large_max_value=99)
    bench = generate_benchmark(cfg)
    big_train = [p for p in bench["train"] if max(map(int, NUM.findall(p.question))) > 20]
    assert len(big_train) > 30  # two-digit numbers above 20 are written in training questions too
    for p in bench["test_large"]:
        assert p.steps in valid_orders(p)


# ----- the many-valid-plans regime -----

def test_tree_order_count_by_hand():
    """n_orders is the hook-length count: a chain has 1 order; a root over two 2-step chains has 4! / (5 * 2 * 2) x
    5 / 5 = 6; over a 2-step chain and one step, 3; over two single steps, 2."""
    from atp_latent.data.synthetic import _Node

    def step(left, right):
        return _Node(0, "+", left, right)

    leaf = _Node(1)
    chain2 = step(step(leaf, leaf), leaf)
    assert step(chain2, leaf).n_orders() == 1  # a chain of 3
    assert step(chain2, chain2).n_orders() == 6
    assert step(chain2, step(leaf, leaf)).n_orders() == 3
    assert step(step(leaf, leaf), step(leaf, leaf)).n_orders() == 2
    assert leaf.n_orders() == 1


def test_labels_are_drawn_uniformly_among_the_valid_orders():
    """Root over a 2-step chain (a1 -> a2) and one step b: 3 orders. Picking a ready step uniformly gives
    [b, a1, a2] half the time; the uniform draw gives each order a third."""
    import collections
    import random

    from atp_latent.data.synthetic import _Node, _random_topological_order, _uniform_topological_order

    leaf = _Node(1)
    a1 = _Node(0, "+", leaf, leaf, name="a1")
    a2 = _Node(0, "+", a1, leaf, name="a2")
    b = _Node(0, "+", leaf, leaf, name="b")
    root = _Node(0, "+", a2, b, name="r")
    rng = random.Random(0)
    n = 6000
    uniform = collections.Counter(tuple(x.name for x in _uniform_topological_order(root, rng)) for _ in range(n))
    assert set(uniform) == {("a1", "a2", "b", "r"), ("a1", "b", "a2", "r"), ("b", "a1", "a2", "r")}
    assert all(abs(c / n - 1 / 3) < 0.03 for c in uniform.values()), uniform
    greedy = collections.Counter(tuple(x.name for x in _random_topological_order(root, rng)) for _ in range(n))
    assert abs(greedy[("b", "a1", "a2", "r")] / n - 1 / 2) < 0.03  # the bias the uniform draw removes


def test_many_plans_regime():
    """Every problem has at least two valid step orders (and some in-distribution ones six or more), labels are
    not in sentence order, 3-5 steps in distribution and 5 with three irrelevant sentences in test_long; bad knobs
    are refused."""
    cfg = SynthConfig.many_plans(n_train=400, n_val=50, n_test=100, n_ood=60, seed=1)
    data = generate_benchmark(cfg)
    for split, problems in data.items():
        counts = [len(valid_orders(p)) for p in problems]
        assert sum(c >= 2 for c in counts) >= 0.97 * len(counts), split  # identical step strings may merge two
        lo, hi = (5, 5) if split == "test_long" else (3, 5)
        assert all(lo <= len(p.steps) <= hi for p in problems), split
    # longer text at the trained depth: three irrelevant sentences, where a training question has at most one
    five = [len(p.question.split(".")) for p in data["test"] if len(p.steps) == 5]
    long_ = [len(p.question.split(".")) for p in data["test_long"]]
    assert min(long_) >= max(five) - 1 and sum(long_) / len(long_) >= sum(five) / len(five) + 1.5
    assert sum(len(valid_orders(p)) >= 6 for p in data["test"]) >= 10
    assert sum(not _in_text_order(p) for p in data["train"]) > 100
    assert SynthConfig.many_plans().text_order is False
    with pytest.raises(ValueError, match="shapes"):
        SynthConfig(shapes=("star",))
    with pytest.raises(ValueError, match="min_orders"):
        SynthConfig(min_orders=0)
