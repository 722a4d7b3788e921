"""RL rewards as small pure functions (METHOD.md §8): accuracy, format, coherence, and their weighted sum."""

from __future__ import annotations

import re
from dataclasses import dataclass

from atp_latent.data.records import parse_number
from atp_latent.evaluation.answers import ANSWER_MARKER, answers_match, extract_answer

_RESULT = re.compile(r"=([^=]*?)>>")
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")  # "12-7" -> 12, 7; "(-3)" -> -3


def accuracy_reward(pred: str | None, gold: str) -> float:
    return 1.0 if answers_match(pred, gold) else 0.0


def format_reward(generated: str) -> float:
    """1 when the answer text generated after `<|end-latent|>` (marker excluded) is `###` then a non-empty answer.

    Sequences are written `<|end-latent|>### 9`, so `###` must come first: any text, a newline included, before
    it gives 0. Leading spaces/tabs are allowed, because a tokenizer may fold a space into its `###` token
    and decoding then shows it. The answer is the rest of that first line (cut at special tokens, as in
    extract_answer); an empty one ("###", or `###` then a newline) gives 0.
    """
    text = (generated or "").lstrip(" \t")
    first = text.split("\n", 1)[0]
    if not first.startswith(ANSWER_MARKER):
        return 0.0
    return 1.0 if extract_answer(first, after=None) else 0.0


def step_result(step: str) -> str:
    """The result of a decoded step: the text between `=` and `>>` ('' when absent)."""
    m = _RESULT.search(step)
    return m.group(1).strip() if m else ""


def _numbers(text: str) -> list[float]:
    return [float(x) for x in _NUMBER.findall(text.replace(",", ""))]


def _uses(result: str, later: str, mode: str) -> bool:
    if mode == "reference":
        return result in later  # substring; '' matches everything (gameable, kept for reproduction)
    value = parse_number(result) if result else None
    if value is None:
        return False
    operands = later.split("=")[0]  # only the expression side counts as using a result
    return any(abs(value - x) < 1e-9 for x in _numbers(operands))


def coherence_reward(steps: list[str], pred: str | None, mode: str = "strict") -> float:
    """Share of decoded steps whose result is used later, the last one counting when it is the answer.

    reference: no steps -> 1, substring matches (an empty result matches). strict (default): no steps -> 0,
    an empty result never matches, whole-number matches on the expression side / the predicted answer.
    """
    n = len(steps)
    if n == 0:
        return 1.0 if mode == "reference" else 0.0
    results = [step_result(s) for s in steps]
    used = sum(1 for s in range(n - 1) if any(_uses(results[s], later, mode) for later in steps[s + 1:]))
    last, answer = results[-1], (pred or "")
    if mode == "reference":
        used += 1 if last in answer else 0
    elif last and answer and answers_match(answer, last):
        used += 1
    return used / n


@dataclass(frozen=True)
class RewardWeights:
    accuracy: float = 1.0
    format: float = 0.5
    coherence: float = 0.1


def total_reward(acc: float, fmt: float, coh: float, w: RewardWeights, coherence_only: bool = False) -> float:
    """r = w_acc*acc + w_fmt*fmt + w_coh*coh*acc; the coherence-only variant uses no answer label:
    r = w_fmt*fmt + w_coh*coh."""
    if coherence_only:
        return w.format * fmt + w.coherence * coh
    return w.accuracy * acc + w.format * fmt + w.coherence * coh * acc


def coherence_matters(acc: float, w: RewardWeights, coherence_only: bool = False) -> bool:
    """Whether `total_reward(acc, fmt, coh, w, coherence_only)` depends on coh at all. The full reward's
    coherence term is w_coh * coh * acc: for a wrong answer (acc 0) it is exactly 0.0 whatever the plan says,
    so RL need not decode that plan. The coherence-only reward counts every plan; w_coh 0 counts none."""
    if not w.coherence:
        return False
    return coherence_only or acc != 0
