"""Every step parse_equation accepts is an evaluable `expression = number`; `data check` reports the others."""

import io
import json
import random

import pytest

from atp_latent.data import DataError, parse_equation, parse_number
from atp_latent.data.formats import check_files, load_records


def python_value(expr: str) -> float:
    """What Python's calculator makes of an accepted expression (GSM8K's annotations are Python)."""
    return float(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 -- digits and operators only, see callers


@pytest.mark.parametrize("step", [
    "16-3-4=9", "9*2=18", "2/.5=4", "5*.01=.05", "(2+3)*4=20", "-3*2=-6", "3*-2=-6", "2**3=8", "3**-1=0.33",
    "560//10=56", "7%3=1", "3-(-2)=5", " 3 + 4 = 7 ", "1.5/2=.75",
    "8=8", "+8=8", "+30+46+38+11+18=143",  # trivial steps and a leading sign, as in GSM8K's own annotations
    "3/4=3/4",  # a fraction as the result (GSM8K test)
])
def test_accepts_evaluable_steps(step):
    expr, result = parse_equation(step)
    python_value(expr)
    assert parse_number(result) is not None or "/" in result


@pytest.mark.parametrize("step", [
    # an operator with a missing operand
    "16-=9", "16-3-=9", "*3=3", "3+*2=5", "3*(2+)=6", "3+=5", "+=3", "**2=1", "3***2=9", "3%=1", "(*3)=3",
    "3*/2=1", "2+(-)=2",
    # not arithmetic, or not evaluable
    "a+1=2", "print(1)=1", "2 3=5", "3/0=1", "3//0=1", "9**9**9=1", "3*2=6=6", "1,000*2=2000", "(3+4=7",
    # no result, or a result that is not a number
    "3+4", "3+4=", "=7", "3+4=x", "3+4=7+", "",
])
def test_rejects_malformed_steps(step):
    with pytest.raises(ValueError):
        parse_equation(step)


def test_missing_operand_message_says_so():
    with pytest.raises(ValueError, match=r"an operator is missing an operand in '16-=9'"):
        parse_equation("16-=9")


def test_every_accepted_random_step_evaluates():
    rng = random.Random(0)
    alphabet = "0123456789+-*/%.() "
    accepted = 0
    for _ in range(20000):
        expr = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
        step = f"{expr}={rng.choice(['7', '-1.5', '.5', 'x', ''])}"
        try:
            left, result = parse_equation(step)
        except ValueError:
            continue
        accepted += 1
        python_value(left)  # raises for anything that is not an evaluable expression
        assert parse_number(result) is not None
    assert accepted > 500  # the check saw many accepted steps, not only rejections


def test_data_check_reports_each_malformed_step(tmp_path):
    rows = [
        {"question": "Q1", "answer": "18", "steps": ["16-3-4=9", "9*2=18"]},
        {"question": "Q2", "answer": "9", "steps": ["16-=9"]},
        {"question": "Q3", "answer": "9", "steps": ["16-3-4=9", "<<*3=9>>"]},
        {"question": "Q4", "answer": "9", "steps": ["16-3-4=nine"]},
    ]
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    assert check_files([path], out=out) == 1
    lines = out.getvalue().splitlines()
    assert "records=1 " in lines[0] and "errors=3" in lines[0]
    assert lines[1] == f"{path}:2: steps[0]: unparseable equation: an operator is missing an operand in '16-=9'"
    assert lines[2].startswith(f"{path}:3: steps[1]: unparseable equation: an operator is missing an operand")
    assert lines[3].startswith(f"{path}:4: steps[0]: unparseable equation: result is not a number")
    with pytest.raises(DataError, match=r":2: steps\[0\]: "):
        load_records(path)


def test_shared_gsm8k_steps_all_accepted(shared_data):
    for name in ("gsm8k_train.jsonl", "gsm8k_test.jsonl", "gsm8k_aug_valid.jsonl"):
        for p in load_records(shared_data / name):
            for step in p.steps:
                python_value(parse_equation(step)[0])
