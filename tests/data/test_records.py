import pickle

import pytest

from atp_latent.data import DataError, Problem, evaluate_expression, parse_equation, parse_number
from atp_latent.data.records import bare_step


def test_problem_roundtrip():
    p = Problem("q?", ["1+2=3"], "3", id="x-1", source="s")
    d = p.to_dict()
    assert d == {"question": "q?", "answer": "3", "steps": ["1+2=3"], "id": "x-1", "source": "s"}
    assert Problem.from_dict(d) == p
    bare = Problem("q?", [], "3").to_dict()
    assert "id" not in bare and "source" not in bare
    assert Problem.from_dict({"question": "q", "answer": 5, "id": 7}).id == "7"


def test_data_error_str():
    e = DataError("f.jsonl", 3, "answer", "not a number")
    assert str(e) == "f.jsonl:3: answer: not a number"
    assert isinstance(e, ValueError)
    assert (e.path, e.line, e.field, e.problem) == ("f.jsonl", 3, "answer", "not a number")
    assert str(DataError("f.jsonl", None, "file", "empty")) == "f.jsonl: file: empty"
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


def test_parse_equation():
    assert parse_equation("16-3-4=9") == ("16-3-4", "9")
    assert parse_equation(" 2/.5 = 4 ") == ("2/.5", "4")
    for bad in ["16-3-4", "=9", "16-3-4=", ""]:
        with pytest.raises(ValueError):
            parse_equation(bad)


def test_evaluate_expression():
    assert evaluate_expression("16-3-4") == 9
    assert evaluate_expression("(2+3)*4/2") == 10
    assert evaluate_expression("-2**2") == -4
    assert evaluate_expression("2/.5") == 4
    for bad in ["__import__('os')", "a+1", "1/0", "2**1000", "[1]", "1 if 1 else 2", "3 // 2", "9**9**9"]:
        with pytest.raises(ValueError):
            evaluate_expression(bad)


def test_parse_number():
    cases = {"18": 18, " -3 ": -3, "1,000": 1000, "$5.50": 5.5, "-$5": -5, "12.": 12, "51.0": 51, ".5": 0.5}
    for text, value in cases.items():
        assert parse_number(text) == value
    for bad in ["", "abc", "nan", "inf", "1_000", "3/4", "$", "1.2.3"]:
        assert parse_number(bad) is None


def test_bare_step():
    assert bare_step("<<16-3-4=9>>") == "16-3-4=9"
    assert bare_step(" 16-3-4=9 ") == "16-3-4=9"  # already bare: unchanged but for whitespace
    assert bare_step("<< 9*2=18 >>") == "9*2=18"
    assert bare_step("<<<<16-3-4=9>>>>") == "<<16-3-4=9>>"  # one pair only; loaders reject the rest
    assert bare_step("<<16-3-4=9") == "<<16-3-4=9"  # unmatched: left for the loader to report
