"""Synthetic GSM-style benchmark: the embedded default dataset.

Each problem is a small binary tree of arithmetic steps. Leaves are numbers stated in the question
("Ava has 3 marbles."); every inner node is one calculator step ("3*4=12") described in words
("Cal has as many marbles as Ava times Ben."); the root is what the question asks for. Because
sibling subtrees are independent, several step orders are usually valid; each record stores one
topological order drawn at random, and `valid_orders` recovers all of them from the record alone.

Splits: train / val / test (in-distribution), test_large (bigger numbers, GSM-Hard's role),
test_long (more steps than any training problem), test_perturbed (shuffled fact sentences and/or
an irrelevant distractor sentence, SVAMP's role). All splits are disjoint by question text.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .formats import write_jsonl
from .records import Problem, parse_equation, parse_number

SPLITS = ("train", "val", "test", "test_large", "test_long", "test_perturbed")
CONFIG_NAME = "synth_config.json"


@dataclass
class SynthConfig:
    """Knobs of the synthetic benchmark. Sizes are problems per split."""

    min_steps: int = 2  # steps per problem in train/val/test/test_large/test_perturbed
    max_steps: int = 4
    long_min_steps: int = 5  # test_long: strictly more steps than any training problem
    long_max_steps: int = 6
    max_operand: int = 9  # numbers stated in the question are 1..max_operand
    max_value: int = 99  # every intermediate and final value lies in 0..max_value
    large_max_operand: int = 99  # test_large: operands up to this (at least one above max_operand)
    large_max_value: int = 999
    n_train: int = 8000
    n_val: int = 300
    n_test: int = 500
    n_ood: int = 500  # size of each OOD split (test_large, test_long, test_perturbed)
    distractor_prob: float = (
        0.5  # test_perturbed: chance of an irrelevant sentence (facts are shuffled otherwise)
    )
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps < self.long_min_steps <= self.long_max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps < long_min_steps <= long_max_steps")
        if self.long_max_steps > _MAX_STEPS:
            raise ValueError(f"long_max_steps > {_MAX_STEPS}: not enough distinct names")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError("need 1 <= max_operand <= max_value")
        if not self.max_operand < self.large_max_operand <= self.large_max_value:
            raise ValueError("need max_operand < large_max_operand <= large_max_value")

    @classmethod
    def hard(cls, **overrides) -> SynthConfig:
        """Harder in-distribution numbers: operands up to 20, values up to 200."""
        return cls(**{"max_operand": 20, "max_value": 200, **overrides})


# -----------------------------------------------------------------------------
# vocabulary: kept small on purpose, a word-level tokenizer is built from this corpus

NAMES = (
    "Ava", "Ben", "Cal", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jay", "Kim", "Leo",
    "Mia", "Ned", "Oli", "Pam", "Quin", "Ray", "Sam", "Tom", "Uma", "Vic", "Wes", "Zoe",
)  # fmt: skip
OBJECTS = (
    ("marble", "marbles"), ("apple", "apples"), ("sticker", "stickers"), ("coin", "coins"),
    ("book", "books"), ("pencil", "pencils"), ("card", "cards"), ("shell", "shells"),
    ("stamp", "stamps"), ("cookie", "cookies"),
)  # fmt: skip
FACT_TEMPLATES = ("{A} has {n} {obj}.", "{A} owns {n} {obj}.", "{A} keeps {n} {obj}.")
STEP_TEMPLATES = {
    "+": ("{C} has as many {objs} as {A} and {B} together.", "{C} has the sum of the {objs} of {A} and {B}."),
    "-": (
        "{C} has as many {objs} as {A} has more than {B}.",
        "{C} has the {objs} of {A} minus the {objs} of {B}.",
    ),
    "*": ("{C} has as many {objs} as {A} times {B}.", "{C} has the product of the {objs} of {A} and {B}."),
    "/": (
        "{C} has as many {objs} as {A} divided by {B}.",
        "{C} has the {objs} of {A} divided by the {objs} of {B}.",
    ),
}
QUESTION_TEMPLATES = ("How many {objs} does {C} have?", "What is the number of {objs} that {C} has?")
SHAPES = ("chain", "balanced", "random")
# a problem with k steps has 2k+1 quantities, plus one name for a distractor
_MAX_STEPS = (len(NAMES) - 2) // 2
_COMMUTATIVE = {"+", "*"}


# -----------------------------------------------------------------------------
# the step graph


@dataclass
class _Node:
    value: int
    op: str | None = None  # None: a leaf, i.e. a number stated in the question
    left: _Node | None = None
    right: _Node | None = None
    name: str = ""

    def leaves(self) -> list[_Node]:
        return [self] if self.op is None else self.left.leaves() + self.right.leaves()

    def inner(self) -> list[_Node]:
        """Inner nodes (steps) in post-order: a canonical topological order."""
        return [] if self.op is None else self.left.inner() + self.right.inner() + [self]


class _Reject(Exception):
    """The random draw broke a constraint; the caller draws again."""


def _apply(op: str, a: int, b: int, max_value: int) -> int | None:
    """a op b if it is an exact integer in 0..max_value, else None."""
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif b == 0 or a % b:  # "/": exact only
        return None
    else:
        r = a // b
    return r if 0 <= r <= max_value else None


def _dull(op: str, a: int, b: int) -> bool:
    """Steps like x*1, x/1, x/x, x-x, x+0: legal but uninformative, and they make coincidental orders."""
    if op == "+":
        return a == 0 or b == 0
    if op == "*":
        return a <= 1 or b <= 1
    if op == "-":
        return a == b or b == 0
    return b == 1 or a == b or a == 0  # "/"


def _fit_leaf(
    op: str,
    other: int,
    leaf_left: bool,
    allow_dull: bool,
    max_operand: int,
    max_value: int,
    rng: random.Random,
) -> int | None:
    """A leaf value in 1..max_operand that makes `leaf op other` (or `other op leaf`) valid, or None."""
    ok = []
    for x in range(1, max_operand + 1):
        a, b = (x, other) if leaf_left else (other, x)
        if _apply(op, a, b, max_value) is not None and (allow_dull or not _dull(op, a, b)):
            ok.append(x)
    return rng.choice(ok) if ok else None


def _grow(n_steps: int, shape: str, max_operand: int, max_value: int, rng: random.Random) -> _Node:
    """A random tree with n_steps inner nodes whose values all satisfy the bounds (or _Reject).

    Ops are tried in random order, non-dull combinations first.
    """
    if n_steps == 0:
        return _Node(rng.randint(1, max_operand))
    rest = n_steps - 1
    if shape == "chain":
        n_left = rng.choice((0, rest))
    elif shape == "balanced":
        n_left = rng.choice(((rest + 1) // 2, rest // 2))
    else:
        n_left = rng.randint(0, rest)
    n_right = rest - n_left
    ops = list(STEP_TEMPLATES)
    rng.shuffle(ops)
    if n_left == 0 or n_right == 0:
        # one operand is a stated number: pick the op first, then a number that makes it valid
        leaf_left = n_left == 0 and (n_right > 0 or rng.random() < 0.5)
        sub = _grow(max(n_left, n_right), shape, max_operand, max_value, rng)
        for allow_dull in (False, True):
            for op in ops:
                x = _fit_leaf(op, sub.value, leaf_left, allow_dull, max_operand, max_value, rng)
                if x is not None:
                    left, right = (_Node(x), sub) if leaf_left else (sub, _Node(x))
                    return _Node(_apply(op, left.value, right.value, max_value), op, left, right)
        raise _Reject
    left = _grow(n_left, shape, max_operand, max_value, rng)
    right = _grow(n_right, shape, max_operand, max_value, rng)
    for allow_dull in (False, True):
        for op in ops:
            value = _apply(op, left.value, right.value, max_value)
            if value is not None and (allow_dull or not _dull(op, left.value, right.value)):
                return _Node(value, op, left, right)
    raise _Reject


def _random_topological_order(root: _Node, rng: random.Random) -> list[_Node]:
    """Uniformly pick among the ready steps until all are emitted."""
    done: set[int] = set()  # ids of emitted inner nodes
    pending, order = root.inner(), []

    def ready(n: _Node) -> bool:
        return all(c.op is None or id(c) in done for c in (n.left, n.right))

    while pending:
        node = rng.choice([n for n in pending if ready(n)])
        pending.remove(node)
        done.add(id(node))
        order.append(node)
    return order


def _step_string(n: _Node, rng: random.Random) -> str:
    a, b = n.left.value, n.right.value
    if n.op in _COMMUTATIVE and rng.random() < 0.5:
        a, b = b, a
    return f"{a}{n.op}{b}={n.value}"


# -----------------------------------------------------------------------------
# text


def _fact(name: str, n: int, obj: tuple[str, str], rng: random.Random) -> str:
    return rng.choice(FACT_TEMPLATES).format(A=name, n=n, obj=obj[0] if n == 1 else obj[1])


def _describe(n: _Node, objs: str, rng: random.Random) -> str:
    a, b = n.left.name, n.right.name
    if n.op in _COMMUTATIVE and rng.random() < 0.5:
        a, b = b, a
    return rng.choice(STEP_TEMPLATES[n.op]).format(C=n.name, A=a, B=b, objs=objs)


@dataclass
class _Draft:
    """A problem before it becomes a record: text parts kept apart so they can be perturbed."""

    facts: list[str]
    rules: list[str]
    final: str
    steps: list[str]
    answer: str
    spare_name: str  # unused name for a distractor
    obj: tuple[str, str]

    def question(self, facts: list[str] | None = None) -> str:
        return " ".join((facts if facts is not None else self.facts) + self.rules + [self.final])


def _draft(n_steps: int, max_operand: int, max_value: int, rng: random.Random, need_large: int = 0) -> _Draft:
    """Draw one problem; need_large > 0 requires some stated number above it (test_large)."""
    while True:
        try:
            root = _grow(n_steps, rng.choice(SHAPES), max_operand, max_value, rng)
        except _Reject:
            continue
        leaves, inner = root.leaves(), root.inner()
        if need_large and max(x.value for x in leaves) <= need_large:
            continue
        break
    names = rng.sample(NAMES, len(leaves) + len(inner) + 1)
    for node, name in zip(leaves + inner, names):
        node.name = name
    obj = rng.choice(OBJECTS)
    return _Draft(
        facts=[_fact(x.name, x.value, obj, rng) for x in leaves],
        rules=[_describe(n, obj[1], rng) for n in inner],
        final=rng.choice(QUESTION_TEMPLATES).format(objs=obj[1], C=root.name),
        steps=[_step_string(n, rng) for n in _random_topological_order(root, rng)],
        answer=str(root.value),
        spare_name=names[-1],
        obj=obj,
    )


def _perturb(d: _Draft, cfg: SynthConfig, rng: random.Random) -> list[str]:
    """Fact sentences shuffled and/or with an irrelevant distractor; always differs from d.facts."""
    facts = list(d.facts)
    add_distractor = rng.random() < cfg.distractor_prob
    if not add_distractor or rng.random() < 0.5:
        for _ in range(10):
            rng.shuffle(facts)
            if facts != d.facts:
                break
        else:
            add_distractor = True  # could not reorder (e.g. identical facts): perturb differently
    if add_distractor:
        other = rng.choice([o for o in OBJECTS if o != d.obj])
        facts.insert(
            rng.randint(0, len(facts)), _fact(d.spare_name, rng.randint(1, cfg.max_operand), other, rng)
        )
    return facts


# -----------------------------------------------------------------------------
# public API


def generate_benchmark(cfg: SynthConfig | None = None) -> dict[str, list[Problem]]:
    """All splits of the benchmark, deterministic in cfg.seed and disjoint by question text.

    Each split has its own RNG and eval splits are drawn before train, so changing n_train does not
    change any eval split.
    """
    cfg = cfg or SynthConfig()
    short, long_ = (cfg.min_steps, cfg.max_steps), (cfg.long_min_steps, cfg.long_max_steps)
    small, large = (cfg.max_operand, cfg.max_value), (cfg.large_max_operand, cfg.large_max_value)
    plan = {  # split: (size, step range, (max_operand, max_value))
        "test": (cfg.n_test, short, small),
        "val": (cfg.n_val, short, small),
        "test_large": (cfg.n_ood, short, large),
        "test_long": (cfg.n_ood, long_, small),
        "test_perturbed": (cfg.n_ood, short, small),
        "train": (cfg.n_train, short, small),
    }
    seen: set[str] = set()  # every question text used so far, in any split
    out: dict[str, list[Problem]] = {}
    for split, (size, (lo, hi), (max_operand, max_value)) in plan.items():
        rng = random.Random(f"{cfg.seed}/{split}")
        need_large = cfg.max_operand if split == "test_large" else 0
        problems: list[Problem] = []
        misses = 0
        while len(problems) < size:
            d = _draft(rng.randint(lo, hi), max_operand, max_value, rng, need_large)
            plain = d.question()
            question = d.question(_perturb(d, cfg, rng)) if split == "test_perturbed" else plain
            if question in seen or plain in seen:
                misses += 1
                if misses > 100 * size + 1000:
                    raise ValueError(f"cannot draw {size} distinct {split} problems; enlarge the config")
                continue
            # also reserve the unperturbed text, so train never holds the original of a perturbed problem
            seen.update((question, plain))
            i = len(problems)
            problems.append(
                Problem(question, d.steps, d.answer, id=f"{split}-{i}", source=f"synthetic/{split}")
            )
        out[split] = problems
    return {s: out[s] for s in SPLITS}


def write_benchmark(out_dir: str | Path, cfg: SynthConfig | None = None) -> dict[str, Path]:
    """Write {split}.jsonl for every split and synth_config.json; return {split: path} (splits only)."""
    cfg = cfg or SynthConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        split: write_jsonl(out_dir / f"{split}.jsonl", ps) for split, ps in generate_benchmark(cfg).items()
    }
    (out_dir / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n", encoding="utf-8")
    return paths


_NUM_RE = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")


def _numbers(text: str) -> set[float]:
    return {parse_number(m) for m in _NUM_RE.findall(text)} - {None}


def valid_orders(problem: Problem) -> list[list[str]]:
    """Every order of the record's steps that could be computed from the question alone.

    A permutation is valid if each step's operands are numbers written in the question or results
    of earlier steps, and the last step's result equals the answer. Orders are listed in a stable
    (depth-first, original-index) order; identical step strings do not produce repeated orders.
    """
    answer = parse_number(problem.answer)
    parsed = []
    for s in problem.steps:
        expr, result = parse_equation(s)
        parsed.append((s, _numbers(expr), parse_number(result)))
    given = _numbers(problem.question)
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()

    def extend(order: list[int], known: set[float]) -> None:
        if len(order) == len(parsed):
            key = tuple(parsed[i][0] for i in order)
            if parsed[order[-1]][2] == answer and key not in seen:
                seen.add(key)
                found.append(list(key))
            return
        for i, (_, operands, result) in enumerate(parsed):
            if i not in order and operands <= known:
                extend(order + [i], known | {result})

    if parsed and answer is not None:
        extend([], given)
    return found
