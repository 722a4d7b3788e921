import io
import json
import sys
import types

import pytest

from atp_latent.data import (
    DataError,
    Problem,
    check_file,
    check_files,
    load_hf_dataset,
    load_records,
    write_jsonl,
)
from atp_latent.data.formats import _hf_row_to_problem

GSM8K_LINE = {
    "question": "Natalia sold 48 clips in April and half as many in May. How many in total?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn total 48+24 = <<48+24=72>>72.\n#### 1,072",
}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jsonl(path, objs):
    return write_lines(path, [json.dumps(o) for o in objs])


def test_load_gsm8k_original(tmp_path):
    (p,) = load_records(jsonl(tmp_path / "train.jsonl", [GSM8K_LINE]))
    assert p.steps == ["48/2=24", "48+24=72"]
    assert p.answer == "1072"
    assert p.source == "train"
    assert check_file(tmp_path / "train.jsonl").format == "gsm8k-jsonl"


def test_load_shared_jsonl_variants(tmp_path):
    path = jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"question": "Q1 has 2 and 3", "answer": "5", "steps": ["2+3=5"], "solution": "..."},
            {"question": "Q2", "answer": "51.0", "equation": "( 76.0 - 25.0 )", "id": "chal-1"},
            {"question": "Q3", "answer": "39.0", "equation": "X=((32.0+42.0)-35.0)", "id": 0},
            {"question": "Q4", "answer": "-9867630.0", "gsm8k_test_index": 0},
        ],
    )
    ps = load_records(path, source="mine")
    assert [p.steps for p in ps] == [["2+3=5"], [], [], []]  # no invented steps from "equation"
    assert [p.id for p in ps] == [None, "chal-1", "0", None]
    assert [p.answer for p in ps] == ["5", "51.0", "39.0", "-9867630.0"]
    assert {p.source for p in ps} == {"mine"}
    assert check_file(path).format == "shared-jsonl"


def test_load_icot_txt(tmp_path):
    path = write_lines(
        tmp_path / "valid.txt",
        ["Tom has 3 bags of 4 apples. He eats 2.||<<3*4=12>> <<12-2=10>> #### 10", "No steps here?|| #### 7"],
    )
    ps = load_records(path)
    assert [(p.question, p.steps, p.answer) for p in ps] == [
        ("Tom has 3 bags of 4 apples. He eats 2.", ["3*4=12", "12-2=10"], "10"),
        ("No steps here?", [], "7"),
    ]
    assert check_file(path).format == "icot-txt"


def test_write_jsonl_roundtrip(tmp_path):
    ps = [
        Problem("Ünïcode 2 and 3?", ["2+3=5"], "5", id="a-0", source="synthetic/test"),
        Problem("Q", [], "1"),
    ]
    path = write_jsonl(tmp_path / "sub" / "out.jsonl", ps)
    assert "Ünïcode" in path.read_text(encoding="utf-8")
    loaded = load_records(path)
    assert loaded[0] == ps[0]
    assert loaded[1].source == "out"  # records without a source get the file stem


def test_blank_lines_crlf_and_line_separator(tmp_path):
    path = tmp_path / "x.jsonl"
    # U+2028 inside a JSON string must not split the record (str.splitlines would)
    rec = json.dumps({"question": "a\u2028b 1+1", "answer": "2", "steps": ["1+1=2"]}, ensure_ascii=False)
    path.write_text(rec + "\r\n\r\n" + rec + "\r\n", encoding="utf-8")
    assert [p.question for p in load_records(path)] == ["a\u2028b 1+1"] * 2


GOOD = {"question": "Q", "answer": "1", "steps": ["0+1=1"]}
BAD_CASES = [
    ("not-json", ["{not json"], "bad.jsonl:2: json:"),
    ("list", ["[1, 2]"], "bad.jsonl:2: json:"),
    ("no-question", [json.dumps({"answer": "1"})], "bad.jsonl:2: question:"),
    ("no-answer", [json.dumps({"question": "Q"})], "bad.jsonl:2: answer:"),
    ("empty-question", [json.dumps({**GOOD, "question": "  "})], "bad.jsonl:2: question:"),
    ("answer-nan", [json.dumps({**GOOD, "answer": "twelve"})], "bad.jsonl:2: answer:"),
    ("steps-str", [json.dumps({**GOOD, "steps": "1+1=2"})], "bad.jsonl:2: steps:"),
    ("step-int", [json.dumps({**GOOD, "steps": ["1+1=2", 3]})], "bad.jsonl:2: steps[1]:"),
    ("step-no-eq", [json.dumps({**GOOD, "steps": ["1+1=2", "2+2"]})], "bad.jsonl:2: steps[1]:"),
    ("step-empty-side", [json.dumps({**GOOD, "steps": ["=4"]})], "bad.jsonl:2: steps[0]:"),
]


@pytest.mark.parametrize("case,lines,prefix", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_record(tmp_path, monkeypatch, case, lines, prefix):
    monkeypatch.chdir(tmp_path)  # relative path -> exact, short error prefix
    write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), *lines, json.dumps({**GOOD, "question": "Q2"})])
    with pytest.raises(DataError) as err:
        load_records("bad.jsonl")
    assert str(err.value).startswith(prefix)
    out = io.StringIO()
    assert check_files(["bad.jsonl"], out=out) == 1
    text = out.getvalue().splitlines()
    assert "records=2" in text[0] and "format=shared-jsonl" in text[0]
    assert text[1].startswith(prefix) and len(text) == 2


def test_bad_gsm8k_and_icot_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jsonl(tmp_path / "g.jsonl", [GSM8K_LINE, {**GSM8K_LINE, "answer": "It is <<1+1=2>>2."}])
    with pytest.raises(DataError, match=r"^g\.jsonl:2: answer: "):
        load_records("g.jsonl")
    write_lines(
        tmp_path / "i.txt", ["Q||<<1+1=2>> #### 2", "no separator #### 2", "Q||<<1+1>> #### 2", "Q||#### x"]
    )
    out = io.StringIO()
    assert check_files(["i.txt"], out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("i.txt:2: format: ")
    assert lines[2].startswith("i.txt:3: steps[0]: ")
    assert lines[3].startswith("i.txt:4: answer: ")


@pytest.mark.parametrize(
    "name,content,prefix",
    [
        ("empty.jsonl", "", "empty.jsonl: file: "),
        ("blank.jsonl", "\n  \n", "blank.jsonl: file: "),
        ("data.csv", "question,answer\nQ,1\n", "data.csv: format: "),
        ("array.json", '[{"question": "Q", "answer": "1"}]', "array.json: format: "),
        ("missing.jsonl", None, "missing.jsonl: path: "),
        ("folder.jsonl", "DIR", "folder.jsonl: path: "),
        ("latin1.jsonl", b'{"question": "caf\xe9", "answer": "1"}\n', "latin1.jsonl:1: encoding: "),
    ],
)
def test_whole_file_errors(tmp_path, monkeypatch, name, content, prefix):
    monkeypatch.chdir(tmp_path)
    if content == "DIR":
        (tmp_path / name).mkdir()
    elif isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_records(name)
    assert str(err.value).startswith(prefix)
    out = io.StringIO()
    assert check_files([name], out=out) == 1
    assert out.getvalue().splitlines()[1].startswith(prefix)


def test_check_collects_all_errors_and_duplicate_warnings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dup = {"question": "Same  question?", "answer": "2", "steps": ["1+1=2"]}
    jsonl(tmp_path / "d.jsonl", [dup, {**dup, "question": "Same question?"}, {**dup, "question": "Other"}])
    report = check_file("d.jsonl")
    assert report.ok and report.records == 3
    assert report.warnings == ["d.jsonl:2: question: duplicate of line 1"]
    assert check_files(["d.jsonl"]) == 0  # warnings alone do not fail; default out is stdout
    assert "warning: d.jsonl:2: question: duplicate of line 1" in capsys.readouterr().out

    jsonl(tmp_path / "e.jsonl", [{"answer": "1"}, GOOD, {**GOOD, "answer": "x"}])
    report = check_file("e.jsonl")
    assert [str(e).split(": ")[0:2] for e in report.errors] == [
        ["e.jsonl:1", "question"],
        ["e.jsonl:3", "answer"],
    ]
    assert report.records == 1
    assert check_files(["d.jsonl", "e.jsonl"], out=io.StringIO()) == 1


def test_step_stats(tmp_path):
    path = jsonl(tmp_path / "s.jsonl", [GOOD, {**GOOD, "steps": []}, {**GOOD, "steps": ["1+1=2", "2-1=1"]}])
    s = check_file(path).steps
    assert (s.with_steps, s.min, s.max, s.total) == (2, 0, 2, 3)
    assert s.mean == pytest.approx(1.0)


def test_hf_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match=r"pip install atp-latent\[hf\]"):
        load_hf_dataset("openai/gsm8k", "test")


def test_hf_with_fake_datasets(monkeypatch):
    rows = [
        {"question": "Q1", "answer": GSM8K_LINE["answer"]},  # openai/gsm8k
        {"question": "Q2", "cot": "<<600*30/100=180>> <<600-180=420>>", "answer": "420"},  # whynlp/gsm8k-aug
    ]
    fake = types.SimpleNamespace(load_dataset=lambda name, split: rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ps = load_hf_dataset("some/gsm", "train")
    assert [(p.steps, p.answer) for p in ps] == [
        (["48/2=24", "48+24=72"], "1072"),
        (["600*30/100=180", "600-180=420"], "420"),
    ]
    with pytest.raises(DataError, match=r"^x\[train\]:4: answer: "):
        _hf_row_to_problem("x[train]", 4, {"question": "Q"}, "x")


SHARED_COUNTS = {
    "gsm8k_train.jsonl": 7473,
    "gsm8k_test.jsonl": 1319,
    "gsm8k_aug_test.jsonl": 1319,
    "gsm8k_aug_valid.jsonl": 500,
    "gsm_hard.jsonl": 1319,
    "svamp.jsonl": 1000,
    "multiarith.jsonl": 600,
}


def test_shared_data(shared_data):
    paths = [shared_data / name for name in SHARED_COUNTS]
    for path, count in zip(paths, SHARED_COUNTS.values()):
        ps = load_records(path)
        assert len(ps) == count, path.name
        assert all(p.question and isinstance(p.steps, list) for p in ps)
    out = io.StringIO()
    assert check_files(paths, out=out) == 0
    text = out.getvalue()
    assert "gsm8k_test.jsonl: format=shared-jsonl records=1319 steps: with=1301" in text
    assert text.count("warning: ") == 20  # the 20 repeated MultiArith questions


def test_bracketed_steps_are_stripped_by_every_loader(tmp_path):
    # GSM8k-Aug / iCoT JSON copies store "<<16-3-4=9>>"; a Problem holds "16-3-4=9" whichever way it came.
    path = jsonl(tmp_path / "aug.jsonl", [
        {"question": "Q1", "answer": "18", "steps": ["<<16-3-4=9>>", "<<9*2=18>>"]},
        {"question": "Q2", "answer": "18", "steps": ["16-3-4=9", " << 9*2=18 >> "]},
    ])
    assert [p.steps for p in load_records(path)] == [["16-3-4=9", "9*2=18"]] * 2
    assert check_file(path).ok


@pytest.mark.parametrize("step", ["<<<<16-3-4=9>>>>", "<<16-3-4=9", "16-3-4=9>>"])
def test_stray_brackets_in_steps_are_errors(tmp_path, step):
    path = jsonl(tmp_path / "bad.jsonl", [{"question": "Q", "answer": "9", "steps": [step]}])
    with pytest.raises(DataError, match=r":1: steps\[0\]: stray '<<' or '>>'"):
        load_records(path)


@pytest.mark.parametrize("row", [
    # whynlp/gsm8k-aug as published: "steps" is a list of bracketed equations
    {"question": "Q", "steps": ["<<16-3-4=9>>", "<<9*2=18>>"], "answer": "18"},
    {"question": "Q", "cot": ["<<16-3-4=9>>", "<<9*2=18>>"], "answer": "18"},  # cot as a list, bracketed
    {"question": "Q", "cot": ["16-3-4=9", "9*2=18"], "answer": "18"},  # cot as a list, bare
    {"question": "Q", "cot": "<<16-3-4=9>> <<9*2=18>>", "answer": "18"},  # cot as one annotated string
    {"question": "Q", "cot": "16-3-4=9 9*2=18", "answer": "18"},  # cot as one bare string
    {"question": "Q", "cot": ("<<16-3-4=9>>", "9*2=18"), "answer": 18},  # a tuple, a number answer
])
def test_hf_row_shapes(row):
    p = _hf_row_to_problem("x[train]", 1, row, "x")
    assert (p.question, p.steps, p.answer, p.source) == ("Q", ["16-3-4=9", "9*2=18"], "18", "x")


def test_hf_row_bad_cot():
    with pytest.raises(DataError, match=r"^x\[train\]:2: cot: unclosed '<<'"):
        _hf_row_to_problem("x[train]", 2, {"question": "Q", "cot": "<<16-3-4=9", "answer": "9"}, "x")
    with pytest.raises(DataError, match=r"^x\[train\]:3: cot: expected a string or a list"):
        _hf_row_to_problem("x[train]", 3, {"question": "Q", "cot": 5, "answer": "9"}, "x")


def fake_hub(splits):
    """A stand-in `datasets` module whose one dataset has the given splits (errors like the real one)."""
    calls = []

    def load_dataset(name, split):
        calls.append(split)
        if split not in splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(splits)}.')
        return splits[split]

    return types.SimpleNamespace(load_dataset=load_dataset), calls


def test_hf_validation_split_aliases(monkeypatch):
    row = {"question": "Q", "steps": ["<<2+3=5>>"], "answer": "5"}
    fake, calls = fake_hub({"train": [row], "valid": [row]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.warns(UserWarning, match=r"no split 'validation'; using its 'valid' split"):
        (p,) = load_hf_dataset("some/aug", "validation")
    assert p.steps == ["2+3=5"] and calls == ["validation", "valid"]
    # The asked name, when present, is used without a warning or a second try.
    fake, calls = fake_hub({"validation": [row]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert len(load_hf_dataset("some/aug", "validation")) == 1 and calls == ["validation"]
    # Not a validation name: no aliases; a miss is a DataError naming the asked split and the loader's error.
    fake, calls = fake_hub({"train": [row]})
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DataError, match=r"^some/aug\[test\]: path: cannot load dataset: Unknown split \"test\""):
        load_hf_dataset("some/aug", "test")
    assert calls == ["test"]
    with pytest.raises(DataError, match=r"^some/aug\[val\]: path: .*Unknown split \"val\""):
        load_hf_dataset("some/aug", "val")
    assert calls == ["test", "val", "validation", "valid"]
