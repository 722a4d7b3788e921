import pytest

from atp_latent.evaluation.answers import answers_match, extract_answer, parse_number

EXTRACT_CASES = [
    # (text, after, expected)
    ("The total is 5 + 7 = 12. ### 12", "<|end-latent|>", "12"),
    ("#### 1,234", "<|end-latent|>", "1234"),
    ("so ### 51.0\nmore text", "<|end-latent|>", "51.0"),
    ("### -7", "<|end-latent|>", "-7"),
    ("no marker here, answer is 12", "<|end-latent|>", None),
    ("### 3 then ### 4", "<|end-latent|>", "4"),  # the last ### counts
    ("<|start-latent|>### 99<|end-latent|> ### 42", "<|end-latent|>", "42"),
    ("### 99<|end-latent|> the answer is 42", "<|end-latent|>", None),  # only text after end-latent
    ("### 99<|end-latent|> ### 42", None, "42"),
    ("### 99 <|end-latent|>", None, "99"),  # after=None: special token cuts the answer
    ("### 18<|eos|><|eos|>", "<|end-latent|>", "18"),
    ("### 18</s>", "<|end-latent|>", "18"),
    ("### 18<eos>", "<|end-latent|>", "18"),
    ("### ", "<|end-latent|>", ""),
    ("###<|eos|>", "<|end-latent|>", ""),
    ("### 72.", "<|end-latent|>", "72"),
    ("### $1,000,000", "<|end-latent|>", "$1000000"),
    ("###  Paris \n", "<|end-latent|>", "Paris"),
    ("### 153957439.9999999702", "<|end-latent|>", "153957439.9999999702"),
    ("no end latent ### 5", "<|end-latent|>", "5"),  # `after` absent: whole text considered
]


@pytest.mark.parametrize(("text", "after", "expected"), EXTRACT_CASES)
def test_extract_answer(text, after, expected):
    assert extract_answer(text, after=after) == expected


def test_extract_answer_default_after_is_end_latent():
    assert extract_answer("### 1 <|end-latent|> ### 2") == "2"
    assert extract_answer("### 1 <|end-latent|> 2") is None


PARSE_CASES = [
    ("-3", -3.0),
    ("1.5", 1.5),
    (".5", 0.5),
    ("1,234", 1234.0),
    ("$12", 12.0),
    ("-$12", -12.0),
    ("153957439.9999999702", 153957439.9999999702),
    ("1e3", 1000.0),
    (" 42 ", 42.0),
    ("+7", 7.0),
    ("abc", None),
    ("", None),
    ("12abc", None),
    ("nan", None),
    ("inf", None),
    ("1.2.3", None),
    ("-", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


MATCH_CASES = [
    # (pred, gold, expected)
    ("1234", "1,234", True),  # commas
    ("1,234", "1234", True),
    ("51.0", "51", True),  # decimals
    ("51.04", "51", True),
    ("51.1", "51", False),
    ("-3", "-3", True),  # negatives
    ("3", "-3", False),
    ("153957439.9999999702", "153957440", True),  # GSM-Hard artefacts
    ("9284017268534.400390625", "9284017268534.4", True),
    ("9284017268534", "9284017268534.400390625", False),
    (None, "12", False),  # missing ###
    ("", "12", False),  # empty answer
    ("", "", True),
    ("Paris", "Paris", True),  # non-numeric: exact match
    ("paris", "Paris", False),
    (" Paris ", "Paris", True),
    ("12 apples", "12", False),
    ("$12", "12", True),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), MATCH_CASES)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


@pytest.mark.parametrize(
    ("generation", "gold", "expected"),
    [
        ("<|start-latent|><|latent|><|end-latent|>### 1,234<|eos|>", "1234", True),
        ("<|start-latent|><|end-latent|>### 153957439.9999999702\n", "153957440", True),
        ("<|start-latent|><|end-latent|>the answer is 5", "5", False),
        ("<|end-latent|>###", "5", False),
        ("<|end-latent|>### 5. ### 6.", "6", True),
    ],
)
def test_end_to_end(generation, gold, expected):
    assert answers_match(extract_answer(generation), gold) is expected
