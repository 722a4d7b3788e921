"""Synthetic GSM-style benchmark: the embedded default dataset.

Each problem is a small binary tree of arithmetic steps. Every inner node is one calculator step
("3*4=12"); the root is what the question asks for. Because sibling subtrees are independent, several
step orders are usually valid; each record stores one topological order drawn at random, and
`valid_orders` recovers all of them from the record alone.

Two question styles (SynthConfig.style):

- "phrases" (default, learnable by a tiny model): the numbers a step uses are written inside that
  step's sentence and only step results get a name, one person per step, so each sentence is local
  ("Ray has 3 boxes with 4 pens in each box. Quin has 5 more pens than Ray. How many pens does Quin
  have?"). Sentences appear in a random valid dependency order.
- "named": every stated number is its own fact ("Ava has 3 marbles.") and every step is a person
  defined from other names ("Cal has as many marbles as Ava times Ben."), so each step needs several
  lookup hops.

Calibration knobs (the defaults are the calibrated regime, see docs/synthetic-benchmark.md): `text_order` records the
steps in the order of their sentences (other valid orders stay valid, as in GSM8K solutions); `max_start` lets
the number a '-' or '/' step starts from ("had 17 coins and gave away 8") go above max_operand, so that
copying such numbers is learnt in training; `noise_prob` adds an irrelevant sentence to that share of
the questions of every split but test_perturbed.

Splits: train / val / test (in-distribution), test_large (bigger numbers, GSM-Hard's role),
test_long (more steps than any training problem), test_perturbed (SVAMP's role: sentences in another
valid order and/or an irrelevant distractor sentence; in "phrases" style also paraphrase templates
that no other split uses). All splits are disjoint by question text.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .formats import write_jsonl
from .records import Problem, parse_equation, parse_number

SPLITS = ("train", "val", "test", "test_large", "test_long", "test_perturbed")
CONFIG_NAME = "synth_config.json"
STYLES = ("phrases", "named")


@dataclass
class SynthConfig:
    """Knobs of the synthetic benchmark. Sizes are problems per split."""

    min_steps: int = 2  # steps per problem in train/val/test/test_large/test_perturbed
    max_steps: int = 3
    # test_long: at least max_steps steps, and longer than any training question: more steps, and/or
    # `long_noise` irrelevant sentences (training questions have at most one). The default, the deepest
    # training problems with three irrelevant sentences, is what a tiny model can partly solve: with one step
    # more than in training it stops after max_steps steps (docs/synthetic-benchmark.md)
    long_min_steps: int = 3
    long_max_steps: int = 3
    long_noise: int = 3
    max_operand: int = 9  # numbers stated in the question are 1..max_operand
    # except the number a '-' or '/' step starts from ("had 17 coins and gave away 8", "18 split among 6"):
    # 1..max_start (0: max_operand), so numbers above max_operand are written in training questions too
    max_start: int = 20
    max_value: int = 20  # every intermediate and final value lies in 0..max_value
    large_max_operand: int = 20  # test_large: operands up to this (one that no step starts from above max_operand)
    large_max_value: int = 20
    n_train: int = 100000
    n_val: int = 300
    n_test: int = 500
    n_ood: int = 500  # size of each OOD split (test_large, test_long, test_perturbed)
    distractor_prob: float = 1.0  # test_perturbed: chance of an irrelevant sentence (and of reordering: 0.5)
    # the recorded steps follow the order of their sentences, as in most GSM8K solutions (other valid orders
    # remain valid: valid_orders); false: a valid order drawn uniformly among all of them, independently of the text
    text_order: bool = True
    noise_prob: float = 0.3  # every split but test_perturbed: chance of one irrelevant distractor sentence
    paraphrase_prob: float = 1.0  # test_perturbed ("phrases" style): chance of reworded sentences
    seed: int = 0
    style: str = "phrases"  # question wording, one of STYLES (see the module docstring)
    shapes: tuple[str, ...] = ("chain", "balanced", "random")  # the step trees' shapes, drawn uniformly (SHAPES)
    # a problem is drawn again until its steps have at least this many valid orders (topological orders of its
    # tree): 2 keeps out every problem with a single plan
    min_orders: int = 1

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {self.style!r}")
        self.shapes = tuple(self.shapes)
        if not self.shapes or any(sh not in SHAPES for sh in self.shapes):
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {self.shapes!r}")
        if self.min_orders < 1:
            raise ValueError(f"min_orders must be >= 1, got {self.min_orders}")
        if not 1 <= self.min_steps <= self.max_steps <= self.long_min_steps <= self.long_max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps <= long_min_steps <= long_max_steps")
        if self.long_min_steps == self.max_steps and self.long_noise <= (1 if self.noise_prob > 0 else 0):
            raise ValueError("test_long must be longer than any training question: long_min_steps > max_steps, "
                             "or more long_noise sentences than the one a training question may have")
        if self.long_max_steps > _MAX_STEPS:
            raise ValueError(f"long_max_steps > {_MAX_STEPS}: not enough distinct names")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError("need 1 <= max_operand <= max_value")
        if not self.max_operand < self.large_max_operand <= self.large_max_value:
            raise ValueError("need max_operand < large_max_operand <= large_max_value")

    @classmethod
    def many_plans(cls, **overrides) -> SynthConfig:
        """The many-valid-plans regime: 3-5 steps on balanced or random trees with independent branches, every
        problem with at least 2 valid step orders (up to 8 tree orders at 5 steps), and each training label one valid
        order drawn uniformly (text_order off): the premise that a question has several equivalent CoT labels is on
        (docs/synthetic-benchmark.md). test_long, as in the default: the deepest trained problems (5 steps) with three
        irrelevant sentences (with 6-7 steps, more than any training problem, CoT-SFT scored 6.2%: the floor)."""
        return cls(**{"min_steps": 3, "max_steps": 5, "long_min_steps": 5, "long_max_steps": 5, "long_noise": 3,
                      "text_order": False, "shapes": ("balanced", "random"), "min_orders": 2, **overrides})

    @classmethod
    def hard(cls, **overrides) -> SynthConfig:
        """Harder in-distribution numbers: operands up to 50, values up to 500 (test_large: up to 999)."""
        return cls(**{"max_operand": 50, "max_start": 500, "max_value": 500, "large_max_operand": 999,
                      "large_max_value": 999, **overrides})


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
# "phrases" style, keyed by (op, kind); kind says which operands are stated numbers (n) and which are
# earlier results, i.e. named people (q): "nn" two numbers a op b, "qn" Q op b, "nq" b op Q, "qq" Q op R.
# + and * have no "nq" entry: the operands commute, so "qn" is used. Fields: P the step's person, a/b
# numbers, obj_a/obj_b the noun agreeing with a/b, objs the plural noun, box_a/friend_b likewise.
# fmt: off
PHRASE_TEMPLATES = {
    ("+", "nn"): "{P} has {a} red {obj_a} and {b} blue {obj_b}.",
    ("-", "nn"): "{P} had {a} {obj_a} and gave away {b}.",
    ("*", "nn"): "{P} has {a} {box_a} with {b} {obj_b} in each box.",
    ("/", "nn"): "{P} gets an equal share when {a} {obj_a} are split among {b} {friend_b}.",
    ("+", "qn"): "{P} has {b} more {obj_b} than {Q}.",
    ("-", "qn"): "{P} has {b} fewer {obj_b} than {Q}.",
    ("*", "qn"): "{P} has {b} times as many {objs} as {Q}.",
    ("/", "qn"): "{P} has as many {objs} as {Q} divided by {b}.",
    ("-", "nq"): "{P} had {b} {obj_b} and gave away as many as {Q} has.",
    ("/", "nq"): "{P} gets an equal share when {b} {obj_b} are split among as many friends as {Q} has {objs}.",
    ("+", "qq"): "{P} has as many {objs} as {Q} and {R} together.",
    ("-", "qq"): "{P} has as many {objs} as {Q} has more than {R}.",
    ("*", "qq"): "{P} has as many {objs} as {Q} times {R}.",
    ("/", "qq"): "{P} has as many {objs} as {Q} divided by {R}.",
}
PHRASE_QUESTION = "How many {objs} does {P} have?"
# paraphrases used only in test_perturbed ("phrases" style), one per template above
PHRASE_ALT_TEMPLATES = {
    ("+", "nn"): "{P} owns {a} red {obj_a} and {b} blue {obj_b}.",
    ("-", "nn"): "{P} had {a} {obj_a} and gave {b} away.",
    ("*", "nn"): "{P} owns {a} {box_a} with {b} {obj_b} in each box.",
    ("/", "nn"): "{P} gets an equal share when {a} {obj_a} are shared among {b} {friend_b}.",
    ("+", "qn"): "{P} has {b} more {obj_b} than {Q} does.",
    ("-", "qn"): "{P} has {b} fewer {obj_b} than {Q} does.",
    ("*", "qn"): "{P} has {b} times as many {objs} as {Q} does.",
    ("/", "qn"): "{P} has as many {objs} as {Q} has divided by {b}.",
    ("-", "nq"): "{P} had {b} {obj_b} and gave away as many as {Q} does.",
    ("/", "nq"): "{P} gets an equal share when {b} {obj_b} are shared among as many friends as {Q} has {objs}.",
    ("+", "qq"): "{P} has as many {objs} as {Q} and {R} have together.",
    ("-", "qq"): "{P} has as many {objs} as {Q} has more than {R} does.",
    ("*", "qq"): "{P} has as many {objs} as {Q} has times what {R} has.",
    ("/", "qq"): "{P} has as many {objs} as {Q} has divided by what {R} has.",
}
# fmt: on
PHRASE_ALT_QUESTION = "What is the number of {objs} that {P} has?"
DISTRACTOR_TEMPLATE = "{A} has {n} {obj}."
SHAPES = ("chain", "balanced", "random")
# named regimes of the benchmark (`atp-latent bench --regime`): the default and the many-valid-plans one
REGIMES = ("default", "many-plans")
# a problem with k steps has 2k+1 quantities, plus one name for a distractor
_MAX_STEPS = (len(NAMES) - 2) // 2
_COMMUTATIVE = {"+", "*"}
_STARTS = {"-", "/"}  # ops whose left operand is what a sentence starts from ("had 63", "63 split among")


# -----------------------------------------------------------------------------
# the step graph


@dataclass
class _Node:
    value: int
    op: str | None = None  # None: a leaf, i.e. a number stated in the question
    left: _Node | None = None
    right: _Node | None = None
    name: str = ""  # the person holding this quantity (every node in "named" style, steps in "phrases")
    text: str = ""  # "phrases" style: the step's sentence, and its paraphrase for test_perturbed
    alt: str = ""
    start: bool = False  # a leaf that a '-' or '/' step starts from (may exceed max_operand up to max_start)

    def leaves(self) -> list[_Node]:
        return [self] if self.op is None else self.left.leaves() + self.right.leaves()

    def inner(self) -> list[_Node]:
        """Inner nodes (steps) in post-order: a canonical topological order."""
        return [] if self.op is None else self.left.inner() + self.right.inner() + [self]

    def n_orders(self) -> int:
        """How many topological orders its steps have: n! / prod over steps of their subtree's step count (the
        hook-length formula for a tree)."""
        sizes = [len(n.inner()) for n in self.inner()]
        out = math.factorial(len(sizes))
        for k in sizes:
            out //= k
        return out


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
    max_start: int = 0,
) -> int | None:
    """A leaf value in 1..max_operand that makes `leaf op other` (or `other op leaf`) valid, or None.
    A number that a '-' or '/' step starts from ("had 63 and gave away 17") may go up to max_start."""
    ok = []
    hi = max(max_start, max_operand) if leaf_left and op in _STARTS else max_operand
    for x in range(1, hi + 1):
        a, b = (x, other) if leaf_left else (other, x)
        if _apply(op, a, b, max_value) is not None and (allow_dull or not _dull(op, a, b)):
            ok.append(x)
    return rng.choice(ok) if ok else None


def _grow(n_steps: int, shape: str, max_operand: int, max_value: int, rng: random.Random, max_start: int = 0
          ) -> _Node:
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
        sub = _grow(max(n_left, n_right), shape, max_operand, max_value, rng, max_start)
        for allow_dull in (False, True):
            for op in ops:
                x = _fit_leaf(op, sub.value, leaf_left, allow_dull, max_operand, max_value, rng, max_start)
                if x is not None:
                    leaf = _Node(x, start=leaf_left and op in _STARTS)
                    left, right = (leaf, sub) if leaf_left else (sub, leaf)
                    return _Node(_apply(op, left.value, right.value, max_value), op, left, right)
        raise _Reject
    left = _grow(n_left, shape, max_operand, max_value, rng, max_start)
    right = _grow(n_right, shape, max_operand, max_value, rng, max_start)
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


def _uniform_topological_order(root: _Node, rng: random.Random) -> list[_Node]:
    """A topological order of the steps drawn uniformly among all of them (picking uniformly among the ready steps,
    as `_random_topological_order` does for sentences, favours orders that finish a short branch first): each
    subtree's order drawn uniformly, the two interleaved uniformly, the root last; every order then has probability
    1 / root.n_orders()."""
    if root.op is None:
        return []
    left, right = _uniform_topological_order(root.left, rng), _uniform_topological_order(root.right, rng)
    slots = set(rng.sample(range(len(left) + len(right)), len(left)))
    li, ri = iter(left), iter(right)
    return [next(li) if k in slots else next(ri) for k in range(len(left) + len(right))] + [root]


def _step_string(n: _Node, rng: random.Random) -> str:
    a, b = n.left.value, n.right.value
    if n.op in _COMMUTATIVE and rng.random() < 0.5:
        a, b = b, a
    return f"{a}{n.op}{b}={n.value}"


# -----------------------------------------------------------------------------
# text


def _noun(n: int, obj: tuple[str, str]) -> str:
    return obj[0] if n == 1 else obj[1]


def _fact(name: str, n: int, obj: tuple[str, str], rng: random.Random) -> str:
    return rng.choice(FACT_TEMPLATES).format(A=name, n=n, obj=_noun(n, obj))


def _describe(n: _Node, objs: str, rng: random.Random) -> str:
    a, b = n.left.name, n.right.name
    if n.op in _COMMUTATIVE and rng.random() < 0.5:
        a, b = b, a
    return rng.choice(STEP_TEMPLATES[n.op]).format(C=n.name, A=a, B=b, objs=objs)


def _phrase(n: _Node, obj: tuple[str, str], rng: random.Random) -> tuple[str, str]:
    """The "phrases" sentence of step n (plain, paraphrase): stated numbers inline, earlier steps by name."""
    left, right = n.left, n.right
    if n.op in _COMMUTATIVE:
        if (left.op is None) == (right.op is None):
            if rng.random() < 0.5:  # random operand order, as in the step string
                left, right = right, left
        elif left.op is None:  # the number goes second: "P has 3 more pens than Q."
            left, right = right, left
    kind = "".join("n" if c.op is None else "q" for c in (left, right))
    nums = [c.value for c in (left, right) if c.op is None]
    names = [c.name for c in (left, right) if c.op is not None] + ["", ""]
    a, b = ([0] + nums)[-2:] if nums else (0, 0)  # a single stated number is always {b}
    fields = dict(
        P=n.name, Q=names[0], R=names[1], a=a, b=b, objs=obj[1], obj_a=_noun(a, obj), obj_b=_noun(b, obj),
        box_a=_noun(a, ("box", "boxes")), friend_b=_noun(b, ("friend", "friends")),
    )  # fmt: skip
    key = (n.op, kind)
    return PHRASE_TEMPLATES[key].format(**fields), PHRASE_ALT_TEMPLATES[key].format(**fields)


@dataclass
class _Draft:
    """A problem before it becomes a record: text parts kept apart so they can be perturbed."""

    facts: list[str]  # "named" style: one sentence per stated number; "phrases" style: empty
    rules: list[str]  # one sentence per step, in question order
    final: str
    steps: list[str]
    answer: str
    spare_name: str  # unused name for a distractor
    obj: tuple[str, str]
    root: _Node | None = None  # "phrases" style: the tree, to draw another sentence order
    rule_nodes: list[_Node] = dataclasses.field(default_factory=list)  # "phrases": nodes of `rules`

    def question(self, facts: list[str] | None = None) -> str:
        return " ".join((facts if facts is not None else self.facts) + self.rules + [self.final])


def _tree(n_steps: int, max_operand: int, max_value: int, rng: random.Random, need_large: int, max_start: int = 0,
          shapes: tuple[str, ...] = SHAPES, min_orders: int = 1) -> _Node:
    while True:
        try:
            root = _grow(n_steps, rng.choice(shapes), max_operand, max_value, rng, max_start)
        except _Reject:
            continue
        if root.n_orders() < min_orders:
            continue
        # test_large: some operand above the training range, not counting numbers a step starts from
        if need_large and max((x.value for x in root.leaves() if not x.start), default=0) <= need_large:
            continue
        return root


def _draft(
    style: str, n_steps: int, max_operand: int, max_value: int, rng: random.Random, need_large: int = 0,
    text_order: bool = False, max_start: int = 0, shapes: tuple[str, ...] = SHAPES, min_orders: int = 1,
) -> _Draft:
    """Draw one problem; need_large > 0 requires some stated number above it (test_large); text_order: the
    recorded steps follow the order of their sentences (otherwise another valid order drawn at random)."""
    root = _tree(n_steps, max_operand, max_value, rng, need_large, max_start, shapes, min_orders)
    leaves, inner = root.leaves(), root.inner()
    if style == "named":
        names = rng.sample(NAMES, len(leaves) + len(inner) + 1)
        for node, name in zip(leaves + inner, names):
            node.name = name
        obj = rng.choice(OBJECTS)
        return _Draft(
            facts=[_fact(x.name, x.value, obj, rng) for x in leaves],
            rules=[_describe(n, obj[1], rng) for n in inner],
            final=rng.choice(QUESTION_TEMPLATES).format(objs=obj[1], C=root.name),
            steps=[_step_string(n, rng) for n in (inner if text_order else _uniform_topological_order(root, rng))],
            answer=str(root.value),
            spare_name=names[-1],
            obj=obj,
        )
    # "phrases": one person per step, numbers inside the sentences
    names = rng.sample(NAMES, len(inner) + 1)
    for node, name in zip(inner, names):
        node.name = name
    obj = rng.choice(OBJECTS)
    for n in inner:
        n.text, n.alt = _phrase(n, obj, rng)
    rule_nodes = _random_topological_order(root, rng)
    return _Draft(
        facts=[],
        rules=[n.text for n in rule_nodes],
        final=PHRASE_QUESTION.format(objs=obj[1], P=root.name),
        steps=[_step_string(n, rng) for n in (rule_nodes if text_order else _uniform_topological_order(root, rng))],
        answer=str(root.value),
        spare_name=names[-1],
        obj=obj,
        root=root,
        rule_nodes=rule_nodes,
    )


def _distractor(d: _Draft, cfg: SynthConfig, rng: random.Random, name: str = "") -> str:
    """An irrelevant sentence: the unused name with a number of some other object."""
    other = rng.choice([o for o in OBJECTS if o != d.obj])
    n = rng.randint(1, cfg.max_operand)
    return DISTRACTOR_TEMPLATE.format(A=name or d.spare_name, n=n, obj=_noun(n, other))


def _with_distractors(d: _Draft, cfg: SynthConfig, rng: random.Random, k: int) -> str:
    """The question with k irrelevant sentences at random places among the others, each about a different
    person who is not in the problem."""
    words = set(re.findall(r"\w+", d.question()))
    names = [d.spare_name] + rng.sample([n for n in NAMES if n not in words and n != d.spare_name], k - 1)
    sentences = list(d.facts or d.rules)  # "named" style: among the facts
    for name in names:
        sentence = _distractor(d, cfg, rng, name)
        sentences.insert(rng.randint(0, len(sentences)), sentence)
    return d.question(sentences) if d.facts else " ".join(sentences + [d.final])


def _perturb_named(d: _Draft, cfg: SynthConfig, rng: random.Random) -> str:
    """Fact sentences shuffled and/or with an irrelevant distractor; always differs from d.question()."""
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
    return d.question(facts)


def _perturb_phrases(d: _Draft, cfg: SynthConfig, rng: random.Random) -> str:
    """Any mix of: step sentences in another valid order, a distractor sentence, paraphrased sentences.

    Paraphrases come from PHRASE_ALT_TEMPLATES / PHRASE_ALT_QUESTION, which no other split uses.
    Always differs from d.question().
    """
    add_distractor = rng.random() < cfg.distractor_prob
    reorder, paraphrase = rng.random() < 0.5, rng.random() < cfg.paraphrase_prob
    if not (add_distractor or reorder or paraphrase):
        reorder = True
    nodes = d.rule_nodes
    if reorder:
        for _ in range(10):
            other = _random_topological_order(d.root, rng)
            if [n.text for n in other] != d.rules:
                nodes = other
                break
        else:  # a chain has a single valid order: perturb differently
            paraphrase = paraphrase or not add_distractor
    sentences = [n.text for n in nodes]
    final = d.final
    if paraphrase:  # reword a random non-empty subset of the sentences (the question included)
        for i in rng.sample(range(len(nodes) + 1), rng.randint(1, len(nodes) + 1)):
            if i < len(nodes):
                sentences[i] = nodes[i].alt
            else:
                final = PHRASE_ALT_QUESTION.format(objs=d.obj[1], P=d.root.name)
    if add_distractor:
        sentences.insert(rng.randint(0, len(sentences)), _distractor(d, cfg, rng))
    return " ".join(sentences + [final])


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
            d = _draft(cfg.style, rng.randint(lo, hi), max_operand, max_value, rng, need_large, cfg.text_order,
                       cfg.max_start, cfg.shapes, cfg.min_orders)
            plain = d.question()
            if split == "test_perturbed":
                perturb = _perturb_named if cfg.style == "named" else _perturb_phrases
                question = perturb(d, cfg, rng)
            elif split == "test_long" and cfg.long_noise:
                question = _with_distractors(d, cfg, rng, cfg.long_noise)
            elif rng.random() < cfg.noise_prob:
                question = _with_distractors(d, cfg, rng, 1)
            else:
                question = plain
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
