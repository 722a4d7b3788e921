"""model.lora_*: runs that train LoRA adapters (and the heads) on a frozen base, save and load back to identical
logits, resume bit-exactly, run on two processes, start RL from a LoRA checkpoint, and refuse bad settings in
one line before anything is written."""

import json

import pytest
import torch

from atp_latent.cli import main
from atp_latent.config import load_config
from atp_latent.data.sequences import collate
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.lora import has_lora
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.training import sft
from atp_latent.training.sft import train

HEADS = ("latent_head.", "stop_head.")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_data")
    write_benchmark(out, SynthConfig(seed=5, n_train=32, n_val=8, n_test=8, n_ood=8))
    return out


def sets(data, tmp, method="atp", **over) -> list[str]:
    base = {"data.train": data / "train.jsonl", "data.val": "null", "method.name": method, "model.lora_r": 4,
            "optim.lr": 0.01, "optim.batch_size": 8, "train.epochs": 2, "train.log_every": 1,
            "train.report_to": "[]", "curriculum.max_latent_stage": 2, "curriculum.epochs_per_stage": 1,
            "method.latents_per_step": 1, "train.threads": 1, "output_dir": tmp} | over
    return [f"{k}={v}" for k, v in base.items()]


def cli_train(settings: list[str]) -> list[str]:
    return ["train", *[a for s in settings for a in ("--set", s)]]


def batch_of(model, tok, data):
    """An SFT batch at stage 2 (latents, decoder targets, stop labels): its losses read every part of the model."""
    from atp_latent.data.formats import load_records
    from atp_latent.data.sequences import SequenceBuilder

    cur = sft.curriculum_of(load_config(None, sets(data, "unused")))
    builder = SequenceBuilder(tok, model.spec.method, cur, mask_surplus=model.spec.use_stop_head)
    return collate([builder.build(p, 2) for p in load_records(data / "train.jsonl")[:6]], tok.pad_token_id)


@pytest.fixture(scope="module")
def lora_atp(data, tmp_path_factory):
    """An uninterrupted ATP run with model.lora_r=4 (and adapter dropout), with its start and its trained model."""
    tmp = tmp_path_factory.mktemp("lora_runs")
    seen = {}
    real = sft.make_optimizer

    def make(model, cfg):
        seen["start"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["model"] = model
        return real(model, cfg)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sft, "make_optimizer", make)
        run = train(load_config(None, sets(data, tmp, name="full", **{"model.lora_dropout": 0.1})))
    return run, seen["start"], seen["model"], tmp


def test_lora_run_trains_adapters_and_heads_only_and_loads_back(lora_atp, data):
    run, start, trained, _ = lora_atp
    assert has_lora(trained.lm) and has_lora(trained.decoder)  # the trainable separate decoder gets its own
    loaded, tok = LatentReasoner.from_pretrained(run / "final")  # one call, as eval and explain load it
    assert (run / "final" / "lm_adapter" / "adapter_config.json").is_file()
    assert (run / "final" / "decoder_adapter" / "adapter_model.safetensors").is_file()
    end = loaded.state_dict()
    assert set(end) == set(start)
    moved = {k for k in start if not torch.equal(start[k], end[k])}
    frozen = [k for k in start if "lora_" not in k and not k.startswith(HEADS)]
    assert not moved & set(frozen), sorted(moved & set(frozen))[:3]  # base weights (embeddings too) byte-equal
    assert any(k.startswith("lm.") and "lora_B" in k for k in moved)
    assert any(k.startswith("decoder.") and "lora_A" in k for k in moved)
    assert {k.split(".")[0] + "." for k in moved if k.startswith(HEADS)} == set(HEADS)
    # identical logits: the LM's, and every loss term (latents through the heads, the decoder) of one SFT batch
    trained.eval()
    loaded.eval()
    ids = torch.tensor([[3, 8, 5, 9, 4, 7]])
    torch.testing.assert_close(loaded.lm(ids).logits, trained.lm(ids).logits, rtol=0, atol=0)
    batch = batch_of(loaded, tok, data)
    with torch.no_grad():
        a, b = trained(batch), loaded(batch)
    for k in ("ce", "kl", "decoder", "stop"):
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    assert float(a["decoder"]) > 0 and float(a["active_latents"]) > 0


def test_lora_resume_after_a_kill_continues_bit_exactly(lora_atp, data, kill_after_checkpoint):
    full, _, _, tmp = lora_atp
    over = {"model.lora_dropout": 0.1}  # dropout draws from the RNG the checkpoint restores
    kill_after_checkpoint(load_config(None, sets(data, tmp, name="cut", **over, **{"train.checkpoint_every": 2})),
                          6)  # mid-epoch 1 (4 batches per epoch)
    resumed = train(load_config(None, sets(data, tmp, name="cut", **over)), resume=True)
    a, _ = LatentReasoner.from_pretrained(full / "final")
    b, _ = LatentReasoner.from_pretrained(resumed / "final")
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_lora_on_a_cot_checkpoint_is_kept_and_a_different_r_is_refused(lora_atp, data, capsys):
    """model.init_from a LoRA checkpoint: its adapters are kept and train on (an ATP run from a LoRA CoT run: the
    step decoder starts as a copy of the LoRA LM, adapters included); a different lora_r is one line, before any
    run directory is written."""
    _, _, _, tmp = lora_atp
    cot = train(load_config(None, sets(data, tmp, method="cot", name="cot", **{"train.epochs": 1})))
    seen = {}
    real = sft.make_optimizer

    def make(model, cfg):
        seen["model"] = model
        return real(model, cfg)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(sft, "make_optimizer", make)
        train(load_config(None, sets(data, tmp, name="atp_from_cot", **{"model.init_from": cot / "final",
                                                                        "train.epochs": 1, "model.lora_r": "null"})))
    model = seen["model"]
    start, _ = LatentReasoner.from_pretrained(cot / "final")
    lora_b = [k for k in start.state_dict() if "lora_B" in k]
    assert lora_b and not all(torch.equal(start.state_dict()[k], torch.zeros_like(start.state_dict()[k]))
                              for k in lora_b)  # the CoT run trained them
    assert has_lora(model.lm) and has_lora(model.decoder)
    for part in (model.lm, model.decoder):  # the adapters train, the base stays frozen
        trains = [n for n, p in part.named_parameters() if p.requires_grad]
        assert trains and all("lora_" in n for n in trains)
    capsys.readouterr()
    rc = main(cli_train(sets(data, tmp, name="bad_r", **{"model.init_from": cot / "final", "model.lora_r": 8})))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "r=4" in err[0] and "model.lora_r=8" in err[0], err
    assert not (tmp / "bad_r").exists()


def test_lora_on_missing_target_modules_is_one_line_before_anything_is_written(data, tmp_path, capsys):
    capsys.readouterr()
    rc = main(cli_train(sets(data, tmp_path, "cot", name="r", **{"model.lora_target_modules": "[nope]"})))
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: "), out.err
    assert "model.lora_target_modules ['nope'] matches no module of LlamaForCausalLM" in err[0]
    assert not (tmp_path / "r").exists()


SCRIPT = '''
import sys
from atp_latent.config import load_config
from atp_latent.training import sft

sft.train(load_config(None, sys.argv[1:]))
'''


def test_two_process_lora_run_matches_one_process(data, tmp_path):
    """DDP on 2 CPU processes with a frozen base (CoT: find_unused_parameters off, every adapter used): the replicas
    stay in sync and follow the loss curve of one process with the same global batch."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)

    def start(name, procs, bs):
        launch = [] if procs == 1 else ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                        str(procs), "--num_machines", "1", "--mixed_precision", "no",
                                        "--dynamo_backend", "no", "--main_process_port", "29579"]
        over = {"optim.batch_size": bs, "optim.reset_each_epoch": "false", "optim.lr": 0.003, "train.epochs": 3,
                "name": name}
        return subprocess.Popen([sys.executable, *launch, str(script), *sets(data, tmp_path, "cot", **over)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def rows(name, proc):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    procs = {"one": start("one", 1, 16), "two": start("two", 2, 8)}
    one, two = rows("one", procs["one"]), rows("two", procs["two"])
    assert any(r.get("train/processes") == 2 and r.get("train/replicas_in_sync") == 1 for r in two)
    l1 = [r["train/loss"] for r in one if "train/loss" in r]
    l2 = [r["train/loss"] for r in two if "train/loss" in r]
    assert len(l1) == len(l2) == 6
    for a, b in zip(l1, l2):
        assert abs(a - b) <= 0.02 * max(abs(a), 1.0), list(zip(l1, l2))
    a, _ = LatentReasoner.from_pretrained(tmp_path / "one" / "final")
    b, _ = LatentReasoner.from_pretrained(tmp_path / "two" / "final")
    assert has_lora(a.lm) and has_lora(b.lm)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if "lora_" not in k:  # the same frozen base (Adam's sign-sensitive first steps keep the adapters apart)
            assert torch.equal(x, y), k


def test_rl_on_a_lora_atp_checkpoint_moves_adapters_and_heads_only(toy, rl_sets, tmp_path):
    """RL loads a LoRA ATP checkpoint with its adapters: the base stays frozen, the step decoder too (RL freezes
    it), and the adapters and heads move."""
    from atp_latent.modeling.lora import add_lora_to_reasoner
    from atp_latent.training.rl import train_rl
    from atp_latent.training.runs import checkpoint_weights

    model, tok = LatentReasoner.from_pretrained(checkpoint_weights(toy / "sft"))
    add_lora_to_reasoner(model, 4, 32)  # B = 0: the toy's policy, whose rewards differ within a group
    model.save_pretrained(tmp_path / "start", tok)
    start, _ = LatentReasoner.from_pretrained(tmp_path / "start")
    assert has_lora(start.lm) and has_lora(start.decoder)
    run = train_rl(load_config(None, rl_sets(toy, "rl_lora", **{"model.init_from": tmp_path / "start",
                                                                "output_dir": tmp_path, "data.val": "null"})))
    end, _ = LatentReasoner.from_pretrained(run / "final")
    s0, s1 = start.state_dict(), end.state_dict()
    assert set(s0) == set(s1)
    moved = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    assert all(k.startswith(HEADS) or k.startswith("lm.") and "lora_" in k for k in moved), sorted(moved)[:5]
    assert any("lora_B" in k for k in moved) and any(k.startswith("latent_head.") for k in moved)


def test_rl_with_lora_r_on_a_full_checkpoint_adds_adapters_to_the_lm_only(toy, rl_sets, tmp_path):
    """model.lora_r in an RL config on a full ATP checkpoint: fresh adapters on the LM, none on the frozen decoder;
    the base stays the start's."""
    from atp_latent.training.rl import train_rl
    from atp_latent.training.runs import checkpoint_weights

    run = train_rl(load_config(None, rl_sets(toy, "rl_lora_r", **{"model.lora_r": 4, "output_dir": tmp_path,
                                                                  "data.val": "null"})))
    assert (run / "final" / "lm_adapter").is_dir() and not (run / "final" / "decoder_adapter").exists()
    start, _ = LatentReasoner.from_pretrained(checkpoint_weights(toy / "sft"))
    end, _ = LatentReasoner.from_pretrained(run / "final")
    assert has_lora(end.lm) and not has_lora(end.decoder)
    base = {k.replace(".base_layer.", "."): v for k, v in end.state_dict().items() if "lora_" not in k}
    for k, v in start.state_dict().items():
        if not k.startswith(HEADS):
            assert torch.equal(v, base[k]), k
