"""Progress that suits where it is written: tqdm bars on a terminal; in a file or a pipe (the quickstart's and the
bench's logs, CI, `nohup`) a short plain line every N seconds and one when a phase ends, instead of a bar redrawn
with carriage returns (which a log keeps as one line of megabytes).

    bar = progress_bar(total=len(batches), desc="atp epoch 3")   # a tqdm: update, set_postfix, close, ...

$ATP_PROGRESS picks the mode by hand: `bars`, `lines` or `off` (default: bars when stderr is a terminal, else
lines); $ATP_PROGRESS_SECONDS sets the seconds between lines (default 30).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

__all__ = ["progress_bar", "progress_mode", "LineProgress", "quiet_library_bars"]

MODE_ENV = "ATP_PROGRESS"
INTERVAL_ENV = "ATP_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
MAX_LINE = 300  # characters; a line is cut there (a long postfix, say)
LINE_FORMAT = "{desc}{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _in_notebook() -> bool:
    """A Jupyter kernel: its stderr is no terminal, but tqdm.auto draws widgets there."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def progress_mode(stream: Any = None) -> str:
    """`bars`, `lines` or `off`: $ATP_PROGRESS when set, else bars on a terminal (or in a notebook) and lines
    anywhere else."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("bars", "lines", "off"):
        return mode
    return "bars" if _isatty(sys.stderr if stream is None else stream) or _in_notebook() else "lines"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class _LineSink:
    """Passes whole lines through and drops tqdm's own cursor writes (blank, carriage returns)."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip() and "\r" not in text:
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


class LineProgress(std_tqdm):
    """A tqdm that prints `desc: n/total [elapsed<remaining, rate, postfix]` as a plain line at most every
    `interval` seconds (not the first, empty state) and once more when it closes."""

    def __init__(self, *args: Any, interval: float | None = None, **kwargs: Any):
        self._interval = _interval() if interval is None else interval
        self._last_state: tuple | None = None  # (n, postfix) of the last line
        self._last_line_t = time.monotonic()
        self._started_at_n = kwargs.get("initial", 0)
        desc = kwargs.get("desc")
        kwargs["desc"] = f"{desc}: " if desc else ""
        kwargs["file"] = _LineSink(kwargs.get("file") or sys.stderr)
        kwargs["leave"] = True  # the closing line ends each phase
        kwargs["bar_format"] = LINE_FORMAT
        kwargs["mininterval"] = self._interval
        kwargs.setdefault("dynamic_ncols", False)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        closing = self.disable  # tqdm.close() disables the bar before its last display
        if msg == "":  # a request to clear the bar: nothing to clear in a log
            return True
        now = time.monotonic()
        if not closing and (self.n == self._started_at_n or now - self._last_line_t < self._interval):
            return True
        state = (self.n, self.postfix)
        line = (msg if msg is not None else self.__str__()).strip()
        if line and state != self._last_state:  # a new line says something new, not only a later time
            self.fp.write(line[:MAX_LINE] + "\n")
            self.fp.flush()
            self._last_state, self._last_line_t = state, now
        return True


def progress_bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> std_tqdm:
    """A tqdm for this output: a bar on a terminal, periodic short lines in a file or pipe (see the module doc).
    Takes tqdm's arguments (total, initial, desc, leave, ...)."""
    mode = progress_mode(kwargs.get("file"))
    if disable or mode == "off":
        return std_tqdm(iterable, disable=True, **kwargs)
    if mode == "bars":
        return auto_tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)


def quiet_library_bars(stream: Any = None) -> None:
    """Outside a terminal, also turn off the bars Hugging Face libraries draw themselves (loading weights,
    downloads, datasets), which would put carriage returns in a log."""
    if progress_mode(stream) == "bars":
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()
