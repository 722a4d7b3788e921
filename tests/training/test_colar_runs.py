"""CoLaR and CoLaR-RL end to end on a tiny synthetic set: SFT from a CoT checkpoint (c drawn per batch, the latent
loss logged, emb_std saved), evaluation at the prompt's c with the LM-head stop, `explain` through the LM head, GRPO
from that checkpoint (first ratio exactly 1, no stop stream of its own), resume after a kill, and bad settings refused
in one line before anything is written."""

import json

import pytest
import torch

from atp_latent.cli import main
from atp_latent.config import load_config
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.evaluation.evaluate import load_for_eval
from atp_latent.evaluation.explain import explain, format_explanation
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.training.rl import train_rl
from atp_latent.training.sft import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("colar_data")
    write_benchmark(out, SynthConfig(seed=4, n_train=48, n_val=8, n_test=8, n_ood=8))
    return out


def sets(data, tmp, method, **over) -> list[str]:
    base = {"data.train": data / "train.jsonl", "data.val": data / "val.jsonl", "data.max_val": 8,
            "method.name": method, "optim.lr": 0.003, "optim.batch_size": 8, "train.epochs": 2, "train.log_every": 1,
            "train.report_to": "[]", "method.latents_per_step": 1, "curriculum.max_latent_stage": 24,
            "method.max_compression": 3, "eval.batch_size": 8, "train.threads": 1, "output_dir": tmp} | over
    return [f"{k}={v}" for k, v in base.items()]


def rows_of(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def colar_run(data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("colar_runs")
    cot = train(load_config(None, sets(data, tmp, "cot", name="cot", **{"train.epochs": 1})))
    run = train(load_config(None, sets(data, tmp, "colar", name="colar", **{"model.init_from": cot / "final"})))
    return cot, run


def test_colar_sft_from_cot_trains_the_compressed_chain(colar_run):
    cot, run = colar_run
    rows = [r for r in rows_of(run) if "train/loss" in r]
    assert len(rows) == 12 and all("train/latent" in r and "train/ce" in r for r in rows)
    assert all(r["train/loss"] == pytest.approx(r["train/ce"] + r["train/latent"], rel=1e-5) for r in rows)
    assert rows[-1]["train/latent"] < rows[0]["train/latent"]
    spec = json.loads((run / "final" / "reasoner.json").read_text())
    assert spec["method"] == "colar" and spec["lm_head_stop"] and spec["use_vae"] and spec["emb_std"] > 0
    # measured from the CoT checkpoint's table when the run began
    cot_model, _ = LatentReasoner.from_pretrained(cot / "final")
    assert spec["emb_std"] == pytest.approx(float(cot_model.lm.get_input_embeddings().weight.detach().float().std()))
    assert any(r.get("eval/val_accuracy") is not None for r in rows_of(run))


def test_colar_evaluates_and_explains_through_the_lm_head(colar_run, data):
    _, run = colar_run
    model, tok, builder = load_for_eval(run)
    assert tok.decode(builder.eval_prompt("q")[0][-5:-1]).replace(" ", "").startswith("(2)")
    [e] = explain(model, builder, ["Ann has 3 cats and 4 dogs. How many pets?"])
    assert e["stopped_by"] == "LM head" and e["steps"] and e["lm_head_tokens"]
    text = format_explanation(e, "7", model.spec.latents_per_step, model.spec.use_decoder)
    assert "(no step decoder) LM head:" in text


def test_colar_rl_runs_from_colar_and_scores_its_stop_in_the_answer(colar_run, data, tmp_path):
    _, run = colar_run
    cfg = load_config(None, sets(data, tmp_path, "colar-rl", name="rl", **{
        "model.init_from": run / "final", "rl.steps": 2, "rl.questions_per_step": 2, "rl.group_size": 4,
        "rl.minibatch_size": 4, "rl.w_fmt": 0, "rl.w_coh": 0, "rl.latent_logratio": "mean",
        "rl.logratio_clamp": 1e9, "rl.val_every": 1, "rl.checkpoint_every": 1, "rl.length_penalty": "divide"}))
    out = train_rl(cfg)
    rows = [r for r in rows_of(out) if "train/first_ratio_dev" in r]
    assert len(rows) == 2 and all(r["train/first_ratio_dev"] == 0.0 and r["train/stop_loss"] == 0.0 for r in rows)
    assert all(r["train/reward"] <= r["train/reward_accuracy"] + 1e-9 for r in rows)  # divided by the latents
    model, _ = LatentReasoner.from_pretrained(out / "final")
    assert model.spec.method == "colar"


def test_colar_resume_after_a_kill_continues_exactly(data, tmp_path, kill_after_checkpoint):
    """Killed after its step-4 checkpoint, the resumed run ends where an uninterrupted one does (c and the drawn
    labels come from the epoch's stream, the MSE sample from the checkpointed torch stream)."""
    over = {"train.checkpoint_every": 4, "data.val": "null"}
    whole = train(load_config(None, sets(data, tmp_path, "colar", name="whole", **over)))
    cut = load_config(None, sets(data, tmp_path, "colar", name="cut", **over))
    kill_after_checkpoint(cut, 4)
    resumed = train(cut, resume=True)
    a, _ = LatentReasoner.from_pretrained(whole / "final")
    b, _ = LatentReasoner.from_pretrained(resumed / "final")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


@pytest.mark.parametrize("override, expect", [
    ("method.eval_compression=7", "eval_compression"),  # c beyond the trained range
    ("method.emb_std=-1", "emb_std"),
    ("method.latent_loss=l1", "method.latent_loss"),
])
def test_bad_colar_settings_are_one_line(data, tmp_path, override, expect, capsys):
    args = ["train"] + [a for s in sets(data, tmp_path, "colar", name="bad") + [override] for a in ("--set", s)]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not (tmp_path / "bad").exists()


def test_colar_rl_refuses_another_methods_checkpoint(colar_run, data, tmp_path, capsys):
    cot, _ = colar_run
    args = ["train"] + [a for s in sets(data, tmp_path, "colar-rl", name="bad", **{"model.init_from": cot / "final"})
                        for a in ("--set", s)]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "colar-rl starts from CoLaR checkpoints, got method 'cot'" in err[0], err
    assert not (tmp_path / "bad").exists()
