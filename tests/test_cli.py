"""The command line: help, data check/synth, eval and explain on a checkpoint, one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from atp_latent.cli import main
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer

COUNTS = {"gsm8k_train": 7473, "gsm8k_test": 1319, "gsm8k_aug_test": 1319, "gsm8k_aug_valid": 500,
          "gsm_hard": 1319, "svamp": 1000, "multiarith": 600}


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "atp_latent.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("data", "train", "eval", "explain", "quickstart"):
        assert cmd in out.stdout


def test_data_check_on_shared_files(shared_data, capsys):
    files = [str(shared_data / f"{name}.jsonl") for name in COUNTS]
    assert main(["data", "check", *files]) == 0
    out = capsys.readouterr().out
    for name, n in COUNTS.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}.jsonl") or f"/{name}.jsonl" in ln.split()[0])
        assert f"records={n}" in line


@pytest.mark.parametrize("content,expect", [
    ('{"question": "q?", "answer": "1"}\nnot json\n', ":2: json:"),
    ('{"question": "", "answer": "1"}\n', ":1: question:"),
    ('{"question": "q?", "answer": "abc"}\n', ":1: answer:"),
    ('{"question": "q?"}\n', ":1: answer:"),
    ('{"question": "q?", "answer": "2", "steps": "1+1=2"}\n', ":1: steps:"),
    ('{"question": "q?", "answer": "2", "steps": ["1+1"]}\n', ":1: steps[0]:"),
    ("", ": file:"),
])
def test_data_check_bad_files_one_line_errors(tmp_path, content, expect):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "atp_latent.cli", "data", "check", str(f)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert any(expect in line and line.startswith(str(f)) for line in proc.stdout.splitlines()), proc.stdout


def test_unreadable_path_and_unknown_format(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: path:" in capsys.readouterr().out
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    assert main(["data", "check", str(odd)]) == 1
    assert "odd.csv" in capsys.readouterr().out


def test_bad_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lrr: 1\n")
    assert main(["train", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lrr" in err[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_benchmark(root / "data", SynthConfig(seed=1, n_train=20, n_val=8, n_test=6, n_ood=6))
    tok = build_word_tokenizer(["Tom has 3 apples.", "<<1+2=3>>\n### 3"])
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=2)
    LatentReasoner(build_tiny_model("llama-tiny", tok), spec).save_pretrained(root / "run" / "final", tok)
    return root


def test_eval_writes_results(checkpoint, capsys):
    out = checkpoint / "res.json"
    data = checkpoint / "data"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(data / "test.jsonl"),
                 "--data", str(data / "test_long.jsonl"), "--out", str(out), "--max-new-tokens", "4"]) == 0
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"test", "test_long"}
    r = res["results"]["test"]
    assert r["n"] == 6 and 0 <= r["accuracy"] <= 1
    assert r["mean_tokens"] == pytest.approx(r["mean_latents"] + r["mean_answer_tokens"])
    assert "| atp |" in capsys.readouterr().out


def test_eval_sampled_latents_reports_std(checkpoint):
    out = checkpoint / "res_s.json"
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", str(checkpoint / "data" / "test.jsonl"),
                 "--out", str(out), "--latent-sample", "--seeds", "2", "--max-new-tokens", "3"]) == 0
    assert json.loads(out.read_text())["results"]["test"]["seeds"] == 2


def test_eval_missing_benchmark_name_is_clear(checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data", "gsm8k", "--data-dir", str(tmp_path)]) == 1
    assert "gsm8k_test.jsonl" in capsys.readouterr().err


def test_eval_by_name_on_real_benchmarks(checkpoint, shared_data, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint / "run"), "--data-dir", str(shared_data), "--limit", "4",
                 "--max-new-tokens", "2", "--data", "gsm8k", "--data", "gsm-hard", "--data", "svamp",
                 "--data", "multiarith"]) == 0
    assert "gsm-hard" in capsys.readouterr().out


def test_explain_prints_plan(checkpoint, capsys):
    assert main(["explain", "--checkpoint", str(checkpoint / "run"), "--question", "Tom has 3 apples.",
                 "--data", str(checkpoint / "data" / "test.jsonl"), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("Q: ") == 3 and "answer:" in out and "latent slots used" in out


def test_explain_rejects_language_baseline(tmp_path, capsys):
    tok = build_word_tokenizer(["a b"])
    LatentReasoner(build_tiny_model("llama-tiny", tok), ReasonerSpec.for_method("cot")).save_pretrained(tmp_path / "c", tok)
    assert main(["explain", "--checkpoint", str(tmp_path / "c"), "--question", "a"]) == 1
    assert "no latent reasoning" in capsys.readouterr().err


def test_eval_sharded_over_two_processes_matches_one(checkpoint):
    data = checkpoint / "data" / "test_long.jsonl"
    outs = {}
    for n in (1, 2):
        out = checkpoint / f"shard{n}.json"
        args = [sys.executable, "-m", "atp_latent.cli", "eval", "--checkpoint", str(checkpoint / "run"), "--data",
                str(data), "--out", str(out), "--max-new-tokens", "4", "--num-processes", str(n), "--port", "29581"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[n] = json.loads(out.read_text())["results"]["test_long"]
    assert outs[2]["n"] == outs[1]["n"] == 6
    for k in ("accuracy", "mean_tokens", "mean_latents", "mean_answer_tokens"):
        assert outs[2][k] == pytest.approx(outs[1][k])
