"""Progress bars on a terminal, short lines in a file or pipe: a log never gets a line of carriage returns."""

import io
import re

import pytest

from atp_latent import progress
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.progress import LineProgress, progress_bar, progress_mode
from atp_latent.suite import SUITES, TEST_SPLITS, evaluate_jobs, train_jobs

MAX_LINE = 1000


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def long_lines(text: str) -> list[int]:
    return [len(line) for line in text.split("\n") if len(line) > MAX_LINE]


def test_mode(monkeypatch):
    monkeypatch.delenv("ATP_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(FakeTTY()) == "bars"
    monkeypatch.setenv("ATP_PROGRESS", "bars")
    assert progress_mode(io.StringIO()) == "bars"
    monkeypatch.setenv("ATP_PROGRESS", "off")
    assert progress_bar(total=3, file=FakeTTY()).disable


def test_terminal_keeps_the_bar(monkeypatch):
    monkeypatch.delenv("ATP_PROGRESS", raising=False)
    out = FakeTTY()
    bar = progress_bar(total=4, desc="train", file=out, mininterval=0)
    assert not isinstance(bar, LineProgress)
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert "\r" in out.getvalue() and "|" in out.getvalue()


def test_file_gets_short_lines_every_interval_and_one_per_phase(monkeypatch):
    monkeypatch.delenv("ATP_PROGRESS", raising=False)
    out = io.StringIO()
    bar = progress_bar(total=500, desc="atp epoch 3 stage 2", file=out, leave=False, interval=0.0)
    assert isinstance(bar, LineProgress)
    for i in range(500):
        bar.update(1)
        bar.set_postfix(loss=f"{i:.3f}", lat="1.0")
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and not long_lines(text) and all(line.strip() for line in lines)
    assert all(re.fullmatch(r"atp epoch 3 stage 2: \d+/500 \[.*\]", line) for line in lines), lines[:3]
    assert lines[-1].startswith("atp epoch 3 stage 2: 500/500") and "loss=499.000" in lines[-1]

    quiet = io.StringIO()  # the default interval: nothing until the phase ends, then its one line
    bar = progress_bar(total=500, desc="eval", file=quiet)
    for _ in range(500):
        bar.update(1)
        bar.set_postfix(acc="0.5")
    bar.close()
    assert quiet.getvalue().splitlines() == [quiet.getvalue().strip()] and "500/500" in quiet.getvalue()


def test_interval_from_environment(monkeypatch):
    monkeypatch.setenv("ATP_PROGRESS_SECONDS", "0")
    out = io.StringIO()
    with progress_bar(total=3, file=out) as bar:
        for _ in range(3):
            bar.update(1)
    assert [line.split(" ")[0] for line in out.getvalue().splitlines()] == ["1/3", "2/3", "3/3"]
    monkeypatch.setenv("ATP_PROGRESS_SECONDS", "nonsense")
    assert progress._interval() == progress.DEFAULT_INTERVAL


def test_quickstart_job_log_and_eval_have_no_long_lines(tmp_path, monkeypatch, capfd):
    """A training job launched the way the quickstart does (output to its log file), then the quickstart's
    evaluation on every test split (stderr not a terminal): every line is short."""
    monkeypatch.delenv("ATP_PROGRESS", raising=False)
    monkeypatch.setenv("ATP_PROGRESS_SECONDS", "0")  # a progress line at every update: the worst case
    write_benchmark(tmp_path / "data", SynthConfig(seed=1, n_train=96, n_val=8, n_test=8, n_ood=8))
    tiny = ["train.epochs=2", "train.max_minutes=null", "optim.batch_size=16", "data.epoch_size=null",
            "data.max_val=8", "eval.batch_size=8", "train.log_every=1"]
    assert train_jobs(SUITES["quickstart"], [(tmp_path, "nocot", 0)], extra=tiny) == 1
    log = (tmp_path / "logs" / "nocot.log").read_text()
    assert "\r" not in log and not long_lines(log), long_lines(log)
    assert sum(line.startswith("nocot epoch ") for line in log.splitlines()) >= 2 * 6  # 96 / 16 batches, 2 epochs
    capfd.readouterr()
    evaluate_jobs(["nocot"], tmp_path, batch_size=4)
    err = capfd.readouterr().err
    assert "\r" not in err and not long_lines(err)
    for split in TEST_SPLITS:
        assert re.search(rf"^nocot/{split}: 8/8 ", err, re.M), err[-2000:]


@pytest.mark.parametrize("desc", ["", "x" * 5000])
def test_a_line_is_cut(desc):
    out = io.StringIO()
    bar = LineProgress(total=2, desc=desc, file=out, interval=0.0)
    bar.update(2)
    bar.close()
    assert out.getvalue() and max(map(len, out.getvalue().splitlines())) <= progress.MAX_LINE


def test_notebook_keeps_widgets(monkeypatch):
    import sys
    import types

    monkeypatch.delenv("ATP_PROGRESS", raising=False)
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert progress_mode(io.StringIO()) == "bars"
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert progress_mode(io.StringIO()) == "lines"
