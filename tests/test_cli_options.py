"""The command line's options, without training anything: help for every option, bench's output folder per suite,
eval --samples (and its old name --seeds), one exit status for every bad input, --version, `configs`."""

import argparse
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import atp_latent
from atp_latent.cli import BAD_INPUT, build_parser, main
from atp_latent.configtools import load_yaml_dict

CONFIGS = Path(atp_latent.__file__).parent / "configs"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("atp-latent",)):
    """(subcommand path, action) for every action of `parser` and its subparsers, -h/--help left out; a
    subparsers action comes with its choices' help as pseudo-actions."""
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield path, choice
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, action


def test_every_option_has_help():
    actions = list(walk(build_parser()))
    assert len(actions) > 50
    missing = [f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}" for path, a in actions
               if not (a.help or "").strip() or a.help == argparse.SUPPRESS]
    assert not missing, missing


def test_docs_name_every_subcommand_and_option():
    text = DOCS.read_text()
    assert not re.search(r"\bissue \d+", text, re.I)
    for path, action in walk(build_parser()):
        if path[1:]:
            assert f"atp-latent {' '.join(path[1:])}" in text, path
        for option in action.option_strings:
            assert f"`{option}" in text, (path, option)


@pytest.fixture
def fake_bench(monkeypatch, tmp_path):
    """run_bench replaced by a recorder, in an empty working directory."""
    calls = []
    monkeypatch.setattr("atp_latent.suite.run_bench", lambda args: calls.append(args) or 0)
    monkeypatch.chdir(tmp_path)
    return calls


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("suite", ["cpu", "gpu"])
def test_bench_out_defaults_to_its_suite(fake_bench, suite):
    assert main(["bench", "--suite", suite]) == 0
    assert Path(fake_bench[0].out) == Path("results") / suite
    assert main(["bench", "--suite", suite, "--out", "elsewhere"]) == 0
    assert fake_bench[1].out == "elsewhere"
    assert main(["bench", "--suite", suite, "--regime", "many-plans"]) == 0  # another regime, another folder
    assert Path(fake_bench[2].out) == Path("results") / f"{suite}-many-plans" and fake_bench[2].regime == "many-plans"
    assert fake_bench[0].regime == "default"


def test_bench_never_writes_into_another_suites_folder(fake_bench, capsys):
    assert main(["bench", "--suite", "gpu", "--out", "results/cpu"]) == BAD_INPUT
    assert "cpu suite's folder" in one_error_line(capsys)
    assert main(["bench", "--suite", "cpu", "--out", "./results/gpu/"]) == BAD_INPUT
    assert "gpu suite's folder" in one_error_line(capsys)
    old = Path("old")  # an earlier bench's folder, told by its results.json (older files: by the command only)
    old.mkdir()
    (old / "results.json").write_text(json.dumps({"command": "atp-latent bench --suite cpu --seeds 3"}))
    assert main(["bench", "--suite", "gpu", "--out", "old"]) == BAD_INPUT
    assert "holds the cpu suite's results" in one_error_line(capsys)
    assert not fake_bench
    assert main(["bench", "--suite", "cpu", "--out", "old"]) == 0  # the same suite continues there


def test_bench_seeds_are_training_seeds(fake_bench, capsys):
    assert main(["bench", "--seeds", "3"]) == 0
    assert fake_bench[0].seeds == 3 and not hasattr(fake_bench[0], "samples")
    assert capsys.readouterr().err == ""


def test_eval_samples_and_its_deprecated_name(capsys):
    parser = build_parser()
    args = parser.parse_args(["eval", "--checkpoint", "c", "--data", "d", "--rollout", "--samples", "4"])
    assert args.samples == 4 and capsys.readouterr().err == ""
    assert parser.parse_args(["eval", "--checkpoint", "c", "--data", "d"]).samples == 1
    args = parser.parse_args(["eval", "--checkpoint", "c", "--data", "d", "--rollout", "--seeds", "3"])
    assert args.samples == 3 and not hasattr(args, "seeds")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds is deprecated, use --samples" in err[0]


def test_eval_samples_without_sampling_is_refused(capsys):
    """Greedy evaluation gives the same answers every time: N samples of it would be one, silently."""
    assert main(["eval", "--checkpoint", "c", "--data", "d", "--samples", "3"]) == BAD_INPUT
    assert "--samples 3 needs --latent-sample or --rollout" in one_error_line(capsys)


def test_eval_launch_passes_samples_not_seeds(monkeypatch, capsys):
    """Under --num-processes every process parses the command again: it gets --samples, so the notice is given
    once, by the launching process."""
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: launched.append(cmd) or 0)
    assert main(["eval", "--checkpoint", "c", "--data", "d", "--rollout", "--seeds=2", "--num-processes", "2"]) == 0
    cmd = launched[0]
    assert "--samples=2" in cmd and not any(a.startswith("--seeds") for a in cmd)
    assert "--num-processes" not in cmd
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,expect", [
    (["eval", "--data", "d"], "the following arguments are required: --checkpoint"),  # argparse, eval
    (["bench", "--suite", "tpu"], "invalid choice: 'tpu'"),                           # argparse, bench
    (["train", "--set", "optim.lr=fast"], "optim.lr"),                                 # a bad config value, train
    (["bench", "--set", "optim.lrr=1"], "optim.lrr"),                                  # the same, bench
    (["quickstart", "--set", "method.latents_per_step=0"], "latents_per_step"),       # and quickstart
    (["eval", "--checkpoint", "c", "--data", "d", "--samples", "0"], "expected an integer >= 1, got 0"),
    (["bench", "--scale", "0"], "expected a number > 0"),
    (["bench", "--seeds", "3", "--claim-seeds", "2"], "--claim-seeds 2 is below --seeds 3"),
    (["train", "--port", "70000"], "expected a port number"),
    (["trian"], "invalid choice: 'trian'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_one_exit_status_and_one_line_for_bad_input(fake_bench, monkeypatch, capsys, argv, expect):
    monkeypatch.setattr("atp_latent.quickstart.run_quickstart", lambda args: pytest.fail("quickstart ran"))
    assert main(argv) == BAD_INPUT
    assert expect in one_error_line(capsys)
    assert not fake_bench and not list(Path(".").iterdir())  # nothing ran, nothing was written


def test_bad_input_in_a_process_is_one_line_and_the_same_status(tmp_path):
    """A real process: no usage text, no traceback, the same status for a usage error and a bad config."""
    for argv in (["eval", "--checkpoint", "c"], ["train", "--output-dir", str(tmp_path), "--set", "optim.lrr=1"]):
        proc = subprocess.run([sys.executable, "-m", "atp_latent.cli", *argv], capture_output=True, text=True,
                              timeout=300)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == BAD_INPUT, proc.stderr
        assert len(err) == 1 and err[0].startswith("error: ") and "usage:" not in proc.stdout + proc.stderr


def test_version():
    proc = subprocess.run([sys.executable, "-m", "atp_latent.cli", "--version"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"atp-latent {metadata.version('atp-latent')}"


def listing(out: str) -> dict[str, list[str]]:
    """{tier: [TIER/NAME, ...]} from the output of `atp-latent configs`: a heading per tier, its configs indented."""
    tiers: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("  "):
            tiers[list(tiers)[-1]].append(line.strip())
        elif re.match(r"^\w+:", line):
            tiers[line.split(":")[0]] = []
    return tiers


def test_configs_lists_every_packaged_config_by_tier(capsys):
    assert main(["configs"]) == 0
    tiers = listing(capsys.readouterr().out)
    assert list(tiers) == ["quickstart", "cpu", "gpu", "paper", "accelerate"]
    for tier, names in tiers.items():
        assert names == [f"{tier}/{name}" for name in sorted(p.stem for p in (CONFIGS / tier).glob("*.yaml"))]
    assert main(["configs", "ls", "paper"]) == 0
    assert listing(capsys.readouterr().out) == {"paper": tiers["paper"]}
    assert main(["configs", "ls", "nope"]) == BAD_INPUT
    assert "no tier 'nope'" in one_error_line(capsys)


def test_configs_cp_copies_a_config_that_composes_as_the_packaged_one(tmp_path, capsys):
    """Every packaged config, copied out, composes to the same settings: its `defaults:` chain still resolves."""
    for source in sorted(CONFIGS.glob("*/*.yaml")):
        dest = tmp_path / source.parent.name / source.name
        assert main(["configs", "cp", f"{source.parent.name}/{source.stem}", str(dest)]) == 0
        assert load_yaml_dict(dest) == load_yaml_dict(source), source
    assert main(["configs", "cp", "gpu/atp.yaml", str(tmp_path)]) == 0  # into a folder, under its own name
    text = (tmp_path / "atp.yaml").read_text()
    assert text.startswith("# atp-latent ") and str(CONFIGS / "cpu" / "atp.yaml") in text
    assert "# GPU suite" in text  # the original's comments are kept
    capsys.readouterr()


def test_configs_cp_never_overwrites(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    dest.write_text("keep: me\n")
    assert main(["configs", "cp", "cpu/atp", str(dest)]) == BAD_INPUT
    assert "exists; not overwriting" in one_error_line(capsys)
    assert dest.read_text() == "keep: me\n"
    (tmp_path / "atp.yaml").write_text("keep: me too\n")
    assert main(["configs", "cp", "cpu/atp", str(tmp_path)]) == BAD_INPUT  # nor under a folder
    assert "exists" in one_error_line(capsys)
    assert (tmp_path / "atp.yaml").read_text() == "keep: me too\n"
    for name, expect in (("cpu/nope", "no config 'nope' in cpu"), ("nope/atp", "no tier 'nope'"),
                         ("../cli", "no tier '..'")):
        assert main(["configs", "cp", name, str(tmp_path / "x.yaml")]) == BAD_INPUT
        assert expect in one_error_line(capsys)
    assert not (tmp_path / "x.yaml").exists()

