"""Loading and checking math word problem files.

Formats (detected from the file itself, see `detect_format`):
  gsm8k-jsonl   original GSM8K: {"question", "answer"} where answer is the solution text with
                <<expr=result>> annotations and a final "#### N" line.
  shared-jsonl  our JSONL schema: {"question", "answer": number text, "steps": [str]} or, for
                SVAMP/MultiArith, an "equation" instead of steps, or neither (GSM-Hard). Steps may be
                bare ("16-3-4=9") or bracketed ("<<16-3-4=9>>", as GSM8k-Aug copies store them).
  icot-txt      iCoT text, one problem a line: "question||<<eq>> <<eq>> #### answer" (*.txt).
Plus `load_hf_dataset` for Hugging Face datasets (optional `datasets` package).
Every loader strips one surrounding "<<"/">>" pair, so a Problem's steps are bare equations.

`load_records` stops at the first error; `check_file` / `check_files` collect all of them.
Every error is a DataError that prints as "file:line: field: problem".
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .records import DataError, Problem, bare_step, parse_equation, parse_number

FORMATS = ("gsm8k-jsonl", "shared-jsonl", "icot-txt")

_ANNOTATION_RE = re.compile(r"<<(.*?)>>")
_Item = tuple[int, "Problem | DataError"]  # (1-based line, parsed record or its error)


# -----------------------------------------------------------------------------
# reading and format detection


def _read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 file; unreadable paths and bad encodings become DataErrors."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "path", "no such file") from None
    except IsADirectoryError:
        raise DataError(path, None, "path", "is a directory, not a file") from None
    except OSError as e:
        raise DataError(path, None, "path", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, line, "encoding", f"not UTF-8 text ({e.reason})") from None
    # split on "\n" only: str.splitlines() would also split at U+2028 etc. inside JSON strings
    return [ln.removesuffix("\r") for ln in text.split("\n")]


def _detect(path: Path, lines: list[str]) -> str:
    first = next((ln.strip() for ln in lines if ln.strip()), None)
    if first is None:
        raise DataError(path, None, "file", "empty file (no records)")
    if path.suffix == ".txt":
        return "icot-txt"
    if first.startswith("{"):
        # decide gsm8k vs shared on the first record that parses; bad lines are reported later
        for ln in lines:
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                ans = obj.get("answer")
                is_solution = isinstance(ans, str) and "####" in ans
                return "gsm8k-jsonl" if is_solution and "steps" not in obj else "shared-jsonl"
        return "shared-jsonl"
    if "||" in first and "####" in first:
        return "icot-txt"
    hint = " (a JSON array? convert it to JSONL, one object a line)" if first.startswith("[") else ""
    raise DataError(path, None, "format", f"unknown format{hint}; expected {', '.join(FORMATS)}")


def detect_format(path: str | Path) -> str:
    """Name of the file's format (one of FORMATS); raises DataError when it cannot tell."""
    path = Path(path)
    return _detect(path, _read_lines(path))


# -----------------------------------------------------------------------------
# record validation shared by all formats


def _make_problem(
    where: str, line: int, question: Any, answer: Any, steps: Any, id: Any = None, source: str | None = None
) -> Problem:
    """Validate the raw fields of one record and build a Problem; raise DataError on the first issue."""
    if not isinstance(question, str):
        raise DataError(where, line, "question", f"expected a string, got {type(question).__name__}")
    if not question.strip():
        raise DataError(where, line, "question", "empty question")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(where, line, "answer", f"expected number text, got {type(answer).__name__}")
    answer = str(answer).strip().replace(",", "")
    if parse_number(answer) is None:
        raise DataError(where, line, "answer", f"not a number: {answer!r}")
    if not isinstance(steps, list):
        raise DataError(where, line, "steps", f"expected a list of strings, got {type(steps).__name__}")
    bare = []
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise DataError(where, line, f"steps[{i}]", f"expected a string, got {type(step).__name__}")
        # GSM8k-Aug / iCoT copies store "<<16-3-4=9>>"; a Problem holds the bare equation (sequences add "<<>>").
        step = bare_step(step)
        if "<<" in step or ">>" in step:
            raise DataError(where, line, f"steps[{i}]", f"stray '<<' or '>>' in {step!r}")
        try:
            parse_equation(step)
        except ValueError as e:
            raise DataError(where, line, f"steps[{i}]", f"unparseable equation: {e}") from None
        bare.append(step)
    return Problem(
        question=question.strip(),
        steps=bare,
        answer=answer,
        id=None if id is None else str(id),
        source=source,
    )


def _split_solution(where: str, line: int, text: str, field_name: str) -> tuple[list[str], str]:
    """'... <<a=b>> ... #### N' -> (annotation contents in order, 'N')."""
    body, sep, final = text.rpartition("####")
    if not sep:
        raise DataError(where, line, field_name, "no final '#### answer'")
    return _ANNOTATION_RE.findall(body), final.strip()


def _parse_json_line(
    where: str, line: int, text: str, fmt: str, source: str | None, default_source: str
) -> Problem:
    """One JSONL record. `source` overrides the record's own "source" field, else default_source."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(where, line, "json", f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(where, line, "json", f"expected a JSON object, got {type(obj).__name__}")
    for name in ("question", "answer"):
        if name not in obj:
            raise DataError(where, line, name, "missing field")
    src = source if source is not None else obj.get("source") or default_source
    if fmt == "gsm8k-jsonl":
        if not isinstance(obj["answer"], str):
            raise DataError(where, line, "answer", "expected the GSM8K solution text")
        steps, answer = _split_solution(where, line, obj["answer"], "answer")
        return _make_problem(where, line, obj["question"], answer, steps, obj.get("id"), src)
    if "steps" in obj:
        steps = obj["steps"]
    else:
        # SVAMP/MultiArith give one whole "equation", GSM-Hard nothing: no steps, and we do not invent any
        if "equation" in obj and not isinstance(obj["equation"], str):
            raise DataError(
                where, line, "equation", f"expected a string, got {type(obj['equation']).__name__}"
            )
        steps = []
    return _make_problem(where, line, obj["question"], obj["answer"], steps, obj.get("id"), src)


def _parse_icot_line(where: str, line: int, text: str, source: str | None) -> Problem:
    question, sep, rest = text.partition("||")
    if not sep:
        raise DataError(where, line, "format", "expected 'question||<<eq>> ... #### answer'")
    steps, answer = _split_solution(where, line, rest, "answer")
    return _make_problem(where, line, question, answer, steps, None, source)


def _iter_items(path: Path, source: str | None) -> tuple[str, Iterator[_Item]]:
    """(format, iterator over (line, Problem | DataError)). Whole-file problems raise immediately."""
    lines = _read_lines(path)
    fmt = _detect(path, lines)
    where = str(path)
    default_source = source if source is not None else path.stem

    def items() -> Iterator[_Item]:
        for i, text in enumerate(lines, start=1):
            if not text.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                if fmt == "icot-txt":
                    yield i, _parse_icot_line(where, i, text, default_source)
                else:
                    yield i, _parse_json_line(where, i, text, fmt, source, default_source)
            except DataError as e:
                yield i, e

    return fmt, items()


# -----------------------------------------------------------------------------
# public API


def load_records(path: str | Path, source: str | None = None) -> list[Problem]:
    """Load every problem of a file in any supported format; the first error raises DataError.

    `source` tags every record; by default a record keeps its own "source" field or gets the file stem.
    """
    _, items = _iter_items(Path(path), source)
    problems = []
    for _, item in items:
        if isinstance(item, DataError):
            raise item
        problems.append(item)
    return problems


def write_jsonl(path: str | Path, problems: Iterable[Problem]) -> Path:
    """Write problems in the shared-jsonl schema (UTF-8, one object a line). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return path


# Copies of one dataset name their validation split differently (whynlp/gsm8k-aug: "validation"; other
# GSM8k-Aug copies: "valid"); a missing one of these falls back to the others, with a warning.
_SPLIT_ALIASES = ("validation", "valid", "val")


def load_hf_dataset(name_or_path: str, split: str = "train") -> list[Problem]:
    """Load a Hugging Face dataset with GSM8K-style columns (needs `pip install atp-latent[hf]`).

    Columns: question (or "input"/"problem"); answer (or "target"), either plain number text or a
    GSM8K solution with "#### N"; steps from a "steps" list (whynlp/gsm8k-aug: ["<<16-3-4=9>>", ...]),
    a "cot" list of steps or string of <<eq>> annotations, or the solution's annotations.
    A validation split missing under the asked name is looked up under the other names in _SPLIT_ALIASES.
    """
    try:
        import datasets  # optional dependency, imported lazily so the core package does not need it
    except ImportError:
        raise DataError(
            name_or_path,
            None,
            "datasets",
            "the optional 'datasets' package is not installed: pip install atp-latent[hf]",
        ) from None
    tries = [split] + ([a for a in _SPLIT_ALIASES if a != split] if split in _SPLIT_ALIASES else [])
    first_error = None
    for name in tries:
        try:
            rows = datasets.load_dataset(name_or_path, split=name)
        except Exception as e:  # any loader failure (network, unknown name, bad split) is a data error here
            first_error = first_error or e
            continue
        if name != split:
            warnings.warn(f"{name_or_path}: no split {split!r}; using its {name!r} split", stacklevel=2)
        where = f"{name_or_path}[{name}]"
        return [_hf_row_to_problem(where, i, row, name_or_path) for i, row in enumerate(rows, start=1)]
    raise DataError(f"{name_or_path}[{split}]", None, "path", f"cannot load dataset: {first_error}")


def _cot_steps(where: str, line: int, cot: Any) -> list:
    """Steps from a "cot" column: a list of steps, or one string of "<<eq>>" annotations (else whitespace-split)."""
    if isinstance(cot, str):
        if "<<" not in cot:
            return cot.split()  # bare equations such as "16-3-4=9 9*2=18"
        found = _ANNOTATION_RE.findall(cot)
        if not found:
            raise DataError(where, line, "cot", f"unclosed '<<' in {cot!r}")
        return found
    if isinstance(cot, (list, tuple)):
        return list(cot)
    raise DataError(where, line, "cot", f"expected a string or a list of steps, got {type(cot).__name__}")


def _hf_row_to_problem(where: str, line: int, row: dict[str, Any], source: str) -> Problem:
    """Map one GSM8K-style row (dict) to a Problem; `line` is the 1-based row number."""
    question = next((row[k] for k in ("question", "input", "problem") if k in row), None)
    answer = next((row[k] for k in ("answer", "target") if k in row), None)
    if question is None:
        raise DataError(where, line, "question", "missing field")
    if answer is None:
        raise DataError(where, line, "answer", "missing field")
    steps: Any = []
    if isinstance(answer, str) and "####" in answer:
        steps, answer = _split_solution(where, line, answer, "answer")
    if "steps" in row:
        steps = row["steps"]
        if isinstance(steps, tuple):
            steps = list(steps)
    elif row.get("cot") is not None:
        steps = _cot_steps(where, line, row["cot"])
    return _make_problem(where, line, question, answer, steps, row.get("id"), source)


@dataclass
class StepStats:
    """How many calculator steps the records of a file have."""

    with_steps: int = 0  # records with at least one step
    min: int = 0
    mean: float = 0.0
    max: int = 0
    total: int = 0

    @classmethod
    def of(cls, problems: list[Problem]) -> StepStats:
        counts = [len(p.steps) for p in problems]
        if not counts:
            return cls()
        return cls(
            sum(c > 0 for c in counts), min(counts), sum(counts) / len(counts), max(counts), sum(counts)
        )


@dataclass
class FileReport:
    """Everything check_file found about one file."""

    path: str
    format: str | None = None  # None when the format could not be determined
    records: int = 0  # records that loaded without error
    errors: list[DataError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    steps: StepStats = field(default_factory=StepStats)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        s = self.steps
        return (
            f"{self.path}: format={self.format or '?'} records={self.records} "
            f"steps: with={s.with_steps} min={s.min} mean={s.mean:.2f} max={s.max} total={s.total} "
            f"errors={len(self.errors)} warnings={len(self.warnings)}"
        )


def check_file(path: str | Path) -> FileReport:
    """Check a whole file, collecting every error (not just the first) and duplicate-question warnings."""
    path = Path(path)
    report = FileReport(path=str(path))
    try:
        report.format, items = _iter_items(path, None)
        problems: list[Problem] = []
        first_line: dict[str, int] = {}
        for line, item in items:
            if isinstance(item, DataError):
                report.errors.append(item)
                continue
            problems.append(item)
            key = " ".join(item.question.split())  # whitespace-insensitive
            if key in first_line:
                report.warnings.append(f"{path}:{line}: question: duplicate of line {first_line[key]}")
            else:
                first_line[key] = line
    except DataError as e:  # whole-file problem: nothing else to check
        report.errors.append(e)
        return report
    report.records = len(problems)
    report.steps = StepStats.of(problems)
    return report


def check_files(paths: Iterable[str | Path], out: TextIO | None = None) -> int:
    """Print a summary line per file, then its errors and warnings; return 1 if any error, else 0.

    `out` defaults to sys.stdout at call time (so redirected/captured stdout works).
    """
    out = out if out is not None else sys.stdout
    status = 0
    for p in paths:
        report = check_file(p)
        print(report.summary(), file=out)
        for e in report.errors:
            print(str(e), file=out)
        for w in report.warnings:
            print(f"warning: {w}", file=out)
        status |= int(not report.ok)
    return status
