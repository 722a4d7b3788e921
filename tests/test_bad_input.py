"""Every kind of bad input a user can give: one line on stderr, a non-zero exit, no traceback, no partial output.

The command line runs in this process (`main`), where an exception that escapes it fails the test just as a
traceback would; one case also goes through `python -m atp_latent.cli` for the exit status of a real process."""

import subprocess
import sys

import pytest

from atp_latent.cli import main
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    write_benchmark(root, SynthConfig(seed=2, n_train=32, n_val=8, n_test=8, n_ood=8))
    return root


@pytest.fixture
def run_cli(capsys):
    def run(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        out = capsys.readouterr()
        err = out.err.strip().splitlines()
        assert rc != 0, out.out
        assert len(err) == 1 and err[0].startswith("error: "), out.err
        return err[0]

    return run


def run_process(*args):
    proc = subprocess.run([sys.executable, "-m", "atp_latent.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    return err[0]


def train_args(data, out, *sets):
    args = ["train", "--output-dir", out, "--name", "r", "--set", f"data.train={data / 'train.jsonl'}",
            "--set", "data.val=null", "--set", "train.epochs=1", "--set", "optim.batch_size=8"]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.mark.parametrize("override,expect", [
    ("optim.lrr=1", "optim.lrr"),                       # unknown key
    ("optim.lr=fast", "optim.lr"),                      # wrong type
    ("method.latents_per_step=0", "latents_per_step"),  # impossible value
    ("rl.group_size=1", "group_size"),                  # impossible value
    ("method.name=magic", "method.name"),               # not a method
])
def test_bad_config(data, tmp_path, override, expect, run_cli):
    line = run_cli(*train_args(data, tmp_path, override))
    assert expect in line
    assert not (tmp_path / "r").exists()


def test_bad_data_file(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q?", "answer": "x"}\n')
    line = run_process("train", "--output-dir", tmp_path, "--name", "r", "--set", f"data.train={bad}")
    assert f"{bad}:1: answer:" in line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("path", ["/nonexistent/model/dir", "{tmp}/not_a_model"])
def test_bad_model_path(data, tmp_path, path, run_cli):
    path = path.format(tmp=tmp_path)
    if "not_a_model" in path:
        (tmp_path / "not_a_model").mkdir()
        (tmp_path / "not_a_model" / "config.json").write_text('{"model_type": "bert"}')
    line = run_cli(*train_args(data, tmp_path, f"model.name_or_path={path}"))
    assert path in line
    assert not (tmp_path / "r").exists()


def test_bad_checkpoints(data, tmp_path, run_cli):
    assert "no checkpoint found" in run_cli("eval", "--checkpoint", tmp_path / "missing", "--data", data / "test.jsonl")
    incomplete = tmp_path / "incomplete"
    (incomplete / "final").mkdir(parents=True)
    (incomplete / "final" / "reasoner.json").write_text("{}")
    assert "incomplete" in run_cli("eval", "--checkpoint", incomplete, "--data", data / "test.jsonl")
    # a run whose best checkpoint is recorded but whose best weights are gone: an error naming final/, not final/'s
    # weights in their place (another checkpoint)
    tok = build_word_tokenizer(["a b c"])
    gone = tmp_path / "gone"
    LatentReasoner(build_tiny_model("llama-tiny", tok), ReasonerSpec.for_method("atp")).save_pretrained(
        gone / "final", tok)
    (gone / "best").mkdir()
    (gone / "best" / "COMPLETE").write_text("done")
    line = run_cli("eval", "--checkpoint", gone, "--data", data / "test.jsonl")
    assert "best checkpoint" in line and f"pass {gone / 'final'}" in line
    assert main(["eval", "--checkpoint", str(gone / "final"), "--data", str(data / "test.jsonl"), "--limit", "2",
                 "--max-new-tokens", "2"]) == 0
    # RL must start from an ATP checkpoint, not a CoT one.
    LatentReasoner(build_tiny_model("llama-tiny", tok), ReasonerSpec.for_method("cot")).save_pretrained(
        tmp_path / "cot" / "final", tok)
    line = run_cli(*train_args(data, tmp_path, "method.name=atp-rl", f"model.init_from={tmp_path / 'cot'}"))
    assert "starts from ATP-Latent (SFT) checkpoints, got method 'cot'" in line and not (tmp_path / "r").exists()


def test_resume_with_changed_config(data, tmp_path, run_cli):
    assert main([str(a) for a in train_args(data, tmp_path, "method.name=nocot")]) == 0
    line = run_cli(*train_args(data, tmp_path, "method.name=nocot", "optim.lr=0.5"), "--resume")
    assert "optim.lr" in line
    line = run_cli(*train_args(data, tmp_path, "method.name=nocot"))  # same name without --resume
    assert "already exists" in line
