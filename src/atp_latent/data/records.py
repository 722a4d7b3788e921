"""The record every loader produces, the error every loader raises, and small arithmetic helpers.

A `Problem` is one math word problem: the question text, its calculator steps as bare equations (e.g.
"16-3-4=9", never "<<16-3-4=9>>") in order, and the final answer as number text. Steps may be empty
(SVAMP, MultiArith, GSM-Hard give no step-by-step equations).
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class Problem:
    question: str
    steps: list[str]
    answer: str
    id: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSONL schema: question, answer, steps, plus id/source when they are set."""
        d: dict[str, Any] = {"question": self.question, "answer": self.answer, "steps": list(self.steps)}
        if self.id is not None:
            d["id"] = self.id
        if self.source is not None:
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Problem:
        """Inverse of to_dict (no validation; loaders validate before building a Problem)."""
        return cls(
            question=d["question"],
            steps=list(d.get("steps") or []),
            answer=str(d["answer"]),
            id=None if d.get("id") is None else str(d["id"]),
            source=d.get("source"),
        )


class DataError(ValueError):
    """A problem with input data, located as precisely as we can: file, 1-based line, field.

    `line` is None for whole-file problems (empty file, unknown format, unreadable path).
    """

    def __init__(self, path: object, line: int | None, field: str, problem: str) -> None:
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.field}: {self.problem}"
        return f"{self.path}:{self.line}: {self.field}: {self.problem}"

    def __reduce__(self):  # keep pickling (e.g. multiprocessing) working with the custom __init__
        return (type(self), (self.path, self.line, self.field, self.problem))


# -----------------------------------------------------------------------------
# equations and numbers


def bare_step(step: str) -> str:
    """A step without one surrounding `<<`/`>>` pair: "<<16-3-4=9>>" -> "16-3-4=9"; bare steps pass unchanged.

    GSM8k-Aug / iCoT JSON copies store steps with the brackets; a Problem holds bare equations so that the
    sequence builder adds exactly one pair.
    """
    s = step.strip()
    if s.startswith("<<") and s.endswith(">>") and len(s) >= 4:
        s = s[2:-2].strip()
    return s


_FRACTION_RE = re.compile(r"\d+\s*/\s*\d+")
# with ** written ^ and // written ~: an operator at either end, or two in a row (a sign after an operator,
# "3*-2", is fine)
_DANGLING_OP_RE = re.compile(r"^\s*[*/%^~]|[-+*/%^~]\s*$|[-+*/%^~(]\s*[*/%^~)]|[-+]\s*\)")


def parse_equation(eq: str) -> tuple[str, str]:
    """Split a calculator step "16-3-4=9" into ("16-3-4", "9"), checking that it is an evaluable equation.

    Splits at the last "=". The left side must evaluate as arithmetic: numbers joined by + - * / // % **, each
    operator with both of its operands, parentheses, a sign before a number or parenthesis ("-3*2", and "+8"
    as some GSM8K annotations write it), no division by zero; a bare number ("8=8") is a trivial step and is
    accepted too. The right side must be a number ("9", "-1.5", ".5", "1,000") or a fraction ("3/4").
    Raises ValueError otherwise: no "=", an empty side, an operator missing an operand ("16-=9", "*3=3",
    "3+*2=5", "3*(2+)=6"), names or calls, a result that is not a number.
    """
    if not isinstance(eq, str):
        raise ValueError(f"expected a string, got {type(eq).__name__}")
    expr, sep, result = eq.rpartition("=")
    expr, result = expr.strip(), result.strip()
    if not sep:
        raise ValueError(f"no '=' in {eq!r}")
    if not expr or not result:
        raise ValueError(f"empty side in {eq!r}")
    if parse_number(result) is None and not _FRACTION_RE.fullmatch(result):
        raise ValueError(f"result is not a number in {eq!r}")
    if _DANGLING_OP_RE.search(expr.replace("**", "^").replace("//", "~")):
        raise ValueError(f"an operator is missing an operand in {eq!r}")
    try:
        _evaluate(expr, _STEP_BINOPS, signs=True)
    except ValueError as e:
        raise ValueError(f"{e} (in {eq!r})") from None
    return expr, result


_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
# calculator steps also use Python's // and % (GSM8K's annotations are Python)
_STEP_BINOPS = {**_BINOPS, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_MAX_EXPONENT = 64  # refuse things like 9**9**9 that would hang or exhaust memory


def evaluate_expression(expr: str) -> float:
    """Evaluate an arithmetic expression safely: numbers, + - * / **, parentheses, unary minus.

    Walks the AST instead of calling eval(), so no names, calls or attributes can run.
    Raises ValueError for anything else (including division by zero).
    """
    return _evaluate(expr, _BINOPS, signs=False)


def _evaluate(expr: str, binops: dict, signs: bool) -> float:
    """evaluate_expression with the operators `binops`, and unary plus too when `signs`."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if signs and isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in binops:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
                raise ValueError(f"exponent too large in {expr!r}")
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
                raise ValueError(f"division by zero in {expr!r}")
            value = binops[type(node.op)](left, right)
            if isinstance(value, complex):  # e.g. (-8)**0.5
                raise ValueError(f"complex result in {expr!r}")
            return float(value)
        raise ValueError(f"unsupported syntax in {expr!r}")

    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"not an arithmetic expression: {expr!r}") from e
    try:
        return ev(tree)
    except (OverflowError, RecursionError) as e:
        raise ValueError(f"cannot evaluate {expr!r}: {e}") from e


_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_number(text: str) -> float | None:
    """Parse number text such as "18", "-3", "1,000", "$5.50", "51.0", "12." -> float, else None."""
    if not isinstance(text, str):
        return None
    s = text.strip().replace(",", "")
    sign = ""
    if s[:1] in "+-" and s[1:2] == "$":  # "-$5"
        sign, s = s[0], s[1:]
    s = sign + s.removeprefix("$").strip()
    if s.endswith(".") and s[:-1][-1:].isdigit():  # sentence-final period: "12."
        s = s[:-1]
    if not _NUMBER_RE.fullmatch(s):  # also rejects "nan", "inf" and "1_000" that float() accepts
        return None
    return float(s)
