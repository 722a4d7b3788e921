"""`atp-latent eval` names rows by run with the method beside it; `hf:` data says what it needs."""

import json
import sys
import types

import pytest
import torch

from atp_latent.cli import main
from atp_latent.config import load_config
from atp_latent.configtools import save_yaml
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.evaluation.datasets import load_named, resolve_data
from atp_latent.evaluation.evaluate import markdown_table
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.runs import run_dir_of, run_method


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An atp-rl run (its weights are an `atp` reasoner) and a bare checkpoint outside any run."""
    root = tmp_path_factory.mktemp("names")
    write_benchmark(root / "data", SynthConfig(seed=1, n_train=20, n_val=8, n_test=6, n_ood=6))
    tok = build_word_tokenizer(["Tom has 3 apples.", "<<1+2=3>>\n### 3"])
    torch.manual_seed(0)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok), ReasonerSpec.for_method("atp", max_latent_stage=2))
    model.save_pretrained(root / "runs" / "atp_rl_coherence" / "best" / "model", tok)
    model.save_pretrained(root / "runs" / "atp_rl_coherence" / "final", tok)
    save_yaml(load_config(None, ["method.name=atp-rl", "name=atp_rl_coherence"]),
              root / "runs" / "atp_rl_coherence" / "config.yaml")
    model.save_pretrained(root / "exported", tok)
    return root


def test_run_dir_of(tmp_path):
    run = tmp_path / "runs" / "atp_rl"
    for ckpt in (run, run / "best" / "model", run / "final", run / "epoch-15" / "model",
                 run / "checkpoints" / "step-00000020" / "model", run / "checkpoints" / "step-00000020"):
        assert run_dir_of(ckpt) == run.resolve(), ckpt
    assert run_dir_of(tmp_path / "exported") == (tmp_path / "exported").resolve()
    assert run_method(run) is None  # no config.yaml


@pytest.mark.parametrize("where", ["", "best/model", "final"])
def test_rl_run_row_is_named_by_run_with_its_method(root, capsys, where):
    run = root / "runs" / "atp_rl_coherence"
    out = root / f"res-{where.replace('/', '-') or 'run'}.json"
    assert main(["eval", "--checkpoint", str(run / where), "--data", str(root / "data" / "test.jsonl"),
                 "--out", str(out), "--max-new-tokens", "3"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| run | method | test | mean acc |")
    assert "| atp_rl_coherence | atp-rl | " in table and "| atp |" not in table
    res = json.loads(out.read_text())
    assert (res["run"], res["run_method"], res["method"]) == ("atp_rl_coherence", "atp-rl", "atp")
    # the .md beside the JSON is the printed table (the lines after it: accuracy by solution steps)
    assert out.with_suffix(".md").read_text() == "\n".join(ln for ln in table.splitlines() if ln.startswith("|")) + "\n"
    assert "test by solution steps: " in table


def test_checkpoint_outside_a_run_uses_its_folder_and_reasoner_method(root, capsys):
    assert main(["eval", "--checkpoint", str(root / "exported"), "--data", str(root / "data" / "test.jsonl"),
                 "--max-new-tokens", "3"]) == 0
    assert "| exported | atp | " in capsys.readouterr().out


def test_markdown_table_without_methods_is_unchanged():
    r = {"accuracy": 0.5, "mean_tokens": 3.0, "mean_latents": 1.0, "mean_answer_tokens": 2.0}
    assert markdown_table({"CoT-SFT": {"test": r}}, ["test"]).splitlines() == [
        "| method | test | mean acc | # tokens | latents | answer tokens |", "|---|---|---|---|---|---|",
        "| CoT-SFT | 50.0 | 50.0 | 3.0 | 1.0 | 2.0 |"]
    assert markdown_table({"a": {"test": r}}, ["test"], methods={"a": "cot"}).splitlines()[1] == "|" + "---|" * 7


def test_hf_data_without_datasets_says_how_to_install(root, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails as when it is not installed
    assert main(["eval", "--checkpoint", str(root / "exported"), "--data", "hf:whynlp/gsm8k-aug:test"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'datasets' package" in err[0] and "pip install 'atp-latent[hf]'" in err[0], err
    assert "no such file" not in err[0]
    with pytest.raises(ValueError, match="'datasets' package"):
        resolve_data("hf:whynlp/gsm8k-aug:test")
    # training reads its data the same way
    assert main(["train", "--output-dir", str(root / "t"), "--set", "data.train=hf:whynlp/gsm8k-aug"]) == 1
    assert "pip install 'atp-latent[hf]'" in capsys.readouterr().err
    assert not (root / "t").exists()


def test_hf_data_with_datasets(root, capsys, monkeypatch):
    asked = []

    def load_dataset(name, split):
        asked.append((name, split))
        return [{"question": "Tom has 3 apples. How many?", "answer": "3", "steps": ["<<1+2=3>>"]}] * 4

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    name, problems = load_named("hf:some/gsm")  # default split: test
    assert name == "some/gsm:test" and len(problems) == 4 and problems[0].steps == ["1+2=3"]
    assert main(["eval", "--checkpoint", str(root / "exported"), "--data", "hf:some/gsm:validation",
                 "--max-new-tokens", "3"]) == 0
    assert asked[-1] == ("some/gsm", "validation")
    assert "| exported | atp | " in capsys.readouterr().out
