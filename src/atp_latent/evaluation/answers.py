"""Answer extraction and comparison.

Spec: the answer is the text after the last ``###`` (after ``<|end-latent|>`` for latent
methods), commas removed; a prediction is correct if both it and the gold answer parse as
numbers and differ by less than 0.05 (GSM-Hard has float answers), else on exact string match.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "ANSWER_MARKER",
    "END_LATENT",
    "NUMERIC_TOLERANCE",
    "extract_answer",
    "parse_number",
    "answers_match",
]

ANSWER_MARKER = "###"
END_LATENT = "<|end-latent|>"
NUMERIC_TOLERANCE = 0.05

# End-of-sequence-like special-token text that may trail a decoded answer.
_SPECIAL_TOKEN_RE = re.compile(r"<\|[^<>]*?\|>|</s>|<eos>|<pad>")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def extract_answer(text: str, after: str | None = END_LATENT) -> str | None:
    """Extract the final answer from generated ``text``.

    If ``after`` is given and occurs in ``text``, only the part after its last occurrence is
    considered. Returns ``None`` when there is no ``###``; otherwise the text after the last
    ``###``, stripped, cut at the first newline and at the first special token
    (``<|...|>``, ``</s>``, ``<eos>``), with commas and one trailing period removed. An empty
    string means the model wrote the marker but no answer.
    """
    if text is None:
        return None
    if after and after in text:
        text = text.rsplit(after, 1)[1]
    if ANSWER_MARKER not in text:
        return None
    answer = text.rsplit(ANSWER_MARKER, 1)[1].strip()
    answer = answer.split("\n", 1)[0]
    match = _SPECIAL_TOKEN_RE.search(answer)
    if match is not None:
        answer = answer[: match.start()]
    answer = answer.replace(",", "").strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer


def parse_number(text: str | None) -> float | None:
    """Parse ``text`` as a number (``-3``, ``1.5``, ``.5``, ``1,234``, ``$12``, ``1e3``); else None."""
    if text is None:
        return None
    s = str(text).strip().replace(",", "").replace(" ", "")
    sign = ""
    if s and s[0] in "+-":
        sign, s = s[0], s[1:]
    if s.startswith("$"):
        s = s[1:]
    s = sign + s
    if not _NUMBER_RE.fullmatch(s):
        return None
    value = float(s)
    return value if math.isfinite(value) else None


def answers_match(pred: str | None, gold: str) -> bool:
    """True when ``pred`` and ``gold`` are numerically within 0.05, or identical strings."""
    if pred is None or gold is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return abs(p - g) < NUMERIC_TOLERANCE
    return pred.strip() == str(gold).strip()
