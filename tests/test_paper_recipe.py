"""The paper's recipe end to end at tiny shapes: src/atp_latent/configs/paper/*.yaml through the command line,
changed only by `--set` (model, data, sizes, epochs), so what runs is the paper's: fp32 master weights under bf16
autocast, optim.reset_each_epoch, the separate trainable step decoder, c = 2.

The model is a tiny LLaMA saved with save_pretrained and loaded through model.name_or_path (the real-checkpoint
path). ATP SFT runs 3 epochs and keeps epoch-3/, which the RL configs start from (model.init_from); GRPO runs on 2
processes (gloo), the coherence-only variant on one; `atp-latent eval` scores the RL run's final/. The baselines'
configs (cot, icot, coconut, simcot, codi) run a step or two each. The GPU-scale version is gpu/smoke.py.
"""

import gc
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM

from atp_latent.cli import main
from atp_latent.configtools import load_yaml_dict
from atp_latent.data.formats import load_records
from atp_latent.data.synthetic import SynthConfig, write_benchmark
from atp_latent.modeling.factory import tiny_config
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training import sft

PAPER = Path(__file__).resolve().parents[1] / "src" / "atp_latent" / "configs" / "paper"
BATCH, EPOCH_RECORDS = 4, 4  # one optimizer step per epoch
RL_SHAPE = ["rl.questions_per_step=2", "rl.group_size=4", "rl.minibatch_size=4", "rl.max_new_tokens=4",
            "rl.coherence_max_tokens=4", "eval.max_new_tokens=4"]

pytestmark = pytest.mark.slow


def sets(*overrides: str) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def cli(*args) -> int:
    """`atp-latent ARGS` in this process. Accelerate keeps one process-wide state, and an Accelerator with
    another mixed_precision than the state's refuses to start: the paper runs use bf16, the rest of the suite
    'no', so the state is cleared before and after."""
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def values(rows: list[dict], key: str) -> list:
    return [r[key] for r in rows if key in r]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Synthetic data files, and a tiny LLaMA with a word-level tokenizer saved like a HF checkpoint."""
    root = tmp_path_factory.mktemp("paper")
    paths = write_benchmark(root / "data", SynthConfig(seed=0, n_train=16, n_val=4, n_test=6, n_ood=4))
    problems = [p for split in ("train", "val", "test") for p in load_records(paths[split])]
    tok = build_word_tokenizer(sft.corpus_of(problems))
    cfg = tiny_config("llama-tiny", len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "llama")
    tok.save_pretrained(root / "llama")
    return root


def common(root: Path) -> list[str]:
    """Data files, the folder runs go to, and small sizes: the only changes to the paper configs."""
    data = root / "data"
    return ["--output-dir", root / "runs", *sets(
        f"data.train={data / 'train.jsonl'}", f"data.val={data / 'val.jsonl'}", "data.max_val=4",
        f"optim.batch_size={BATCH}", f"data.epoch_size={EPOCH_RECORDS}", "eval.batch_size=8",
        "eval.cot_max_new_tokens=16", "train.log_every=1", "train.threads=1")]


@pytest.fixture(scope="module")
def atp(root) -> tuple[Path, dict]:
    """paper/atp.yaml for 3 epochs (stages 1, 2, 3 with max_latent_stage 2), keeping epoch-3/. Also returns what
    the optimizer held when the run finished: AdamW objects still holding state, and their step counts."""
    made: list[weakref.ref] = []
    held: dict = {}

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    real_finish = sft.finish_run

    def finish_run(*args, **kwargs):
        gc.collect()
        live = [o for o in (r() for r in made) if o is not None and o.state]
        held.update(optimizers=len(live), steps=sorted({int(s["step"]) for o in live for s in o.state.values()}))
        return real_finish(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim, "AdamW", RecordedAdamW)
        mp.setattr(sft, "finish_run", finish_run)
        rc = cli("train", "--config", PAPER / "atp.yaml", "--name", "atp", *common(root), *sets(
            f"model.name_or_path={root / 'llama'}", "train.epochs=3", "curriculum.epochs_per_stage=1",
            "curriculum.max_latent_stage=2", "train.keep_epochs=[3]"))
    assert rc == 0
    return root / "runs" / "atp", held


def test_atp_sft_runs_the_paper_recipe(atp):
    run, held = atp
    cfg = load_yaml_dict(run / "config.yaml")
    assert (cfg["model"]["dtype"], cfg["train"]["mixed_precision"], cfg["optim"]["reset_each_epoch"]) == \
        ("float32", "bf16", True)
    assert (cfg["method"]["decoder_mode"], cfg["method"]["decoder_trainable"], cfg["method"]["latents_per_step"]) == \
        ("separate", True, 2)
    for ckpt in ("final", "epoch-3/model", "best/model"):
        assert (run / ckpt / "reasoner.json").is_file(), ckpt
    rows = metrics(run)
    steps = [r for r in rows if "train/loss" in r]
    assert [r["train/stage"] for r in steps] == [1, 2, 3]  # stage 3 > max_latent_stage: every step latent
    assert all(r["train/active_latents"] > 0 for r in steps)
    assert all(0 < r["train/sigma"] < 10 for r in steps)  # the VAE head's std under bf16 autocast, every epoch
    assert len(values(rows, "eval/val_accuracy")) == 3
    epochs = [r for r in rows if "train/step_seconds" in r]
    assert [r["train/epoch"] for r in epochs] == [0, 1, 2]
    assert all(r["train/step_seconds"] > 0 and r["train/tokens_per_s"] > 0 for r in epochs)
    assert not values(rows, "train/peak_memory_gib")  # CUDA only
    assert values(rows, "train/replicas_in_sync") == [1]
    # reset_each_epoch: one optimizer alive at the end, its moments only as old as the last epoch
    assert held == {"optimizers": 1, "steps": [EPOCH_RECORDS // BATCH]}


@pytest.fixture(scope="module")
def atp_rl(root, atp) -> Path:
    """paper/atp_rl.yaml from epoch-3/, 2 GRPO steps on 2 processes (gloo)."""
    args = [sys.executable, "-m", "atp_latent.cli", "train", "--config", PAPER / "atp_rl.yaml", "--name", "atp_rl",
            *common(root), *sets(f"model.init_from={atp[0] / 'epoch-3' / 'model'}", "rl.steps=2", *RL_SHAPE),
            "--num-processes", "2", "--port", "29593"]
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return root / "runs" / "atp_rl"


def test_atp_rl_two_processes(atp_rl):
    rows = metrics(atp_rl)
    assert (atp_rl / "final" / "reasoner.json").is_file()
    assert load_yaml_dict(atp_rl / "config.yaml")["train"]["mixed_precision"] == "bf16"
    assert values(rows, "train/first_ratio_dev") == [0, 0]  # old and new log-probs scored alike, in bf16
    assert values(rows, "train/processes") == [2] and values(rows, "train/replicas_in_sync") == [1]
    assert [r["step"] for r in rows if "eval/val_accuracy" in r] == [0, 2]  # the start policy, then the last step


def test_atp_rl_coherence_only(root, atp):
    assert cli("train", "--config", PAPER / "atp_rl_coherence.yaml", "--name", "atp_rl_coh", *common(root),
               *sets(f"model.init_from={atp[0] / 'epoch-3' / 'model'}", "rl.steps=1", *RL_SHAPE)) == 0
    run = root / "runs" / "atp_rl_coh"
    assert load_yaml_dict(run / "config.yaml")["rl"]["reward"] == "coherence_only"
    rows = metrics(run)
    step = next(r for r in rows if "train/first_ratio_dev" in r)
    assert step["train/first_ratio_dev"] == 0
    # r = 0.5 format + 1.0 coherence: no answer label
    assert step["train/reward"] == pytest.approx(0.5 * step["train/reward_format"] + step["train/reward_coherence"])
    assert values(rows, "train/replicas_in_sync") == [1] and (run / "final" / "reasoner.json").is_file()


def test_eval_on_rl_final(root, atp_rl):
    out = root / "eval.json"
    assert cli("eval", "--checkpoint", atp_rl / "final", "--data", root / "data" / "test.jsonl", "--out", out) == 0
    res = json.loads(out.read_text())
    assert res["method"] == "atp"
    r = res["results"]["test"]
    assert r["n"] == 6 and 0 <= r["mean_latents"] <= 4  # max_latent_stage 2, c = 2
    assert r["mean_tokens"] == pytest.approx(r["mean_latents"] + r["mean_answer_tokens"]) and r["mean_tokens"] > 0
    # the numbers are evaluate()'s on the same weights (the CLI adds loading, resolving and the table)
    from atp_latent.evaluation.evaluate import evaluate, load_for_eval

    model, _, builder = load_for_eval(atp_rl / "final")
    summary, _ = evaluate(model, builder, load_records(root / "data" / "test.jsonl"), progress=False)
    for k in ("accuracy", "mean_tokens", "mean_latents", "mean_answer_tokens", "format_rate"):
        assert r[k] == pytest.approx(getattr(summary, k)), k


@pytest.mark.parametrize("method,overrides,stages", [
    ("cot", ["train.epochs=1"], None),  # no curriculum
    ("coconut", ["train.epochs=2", "curriculum.epochs_per_stage=1"], [0, 1]),  # stage 0 is CoT (stage_offset 0)
    ("simcot", ["train.epochs=2", "curriculum.epochs_per_stage=1", "curriculum.max_latent_stage=2"], [1, 2]),
    ("icot", ["train.epochs=2"], None),  # one batch an epoch: a token more at each (upstream's counter of 0)
    ("codi", ["train.epochs=1"], [4]),  # every step latent from the first (stage_offset 4 > max_latent_stage 3)
])
def test_baseline_configs(root, method, overrides, stages):
    assert cli("train", "--config", PAPER / f"{method}.yaml", "--name", method, *common(root),
               *sets(f"model.name_or_path={root / 'llama'}", *overrides)) == 0
    run = root / "runs" / method
    assert json.loads((run / "final" / "reasoner.json").read_text())["method"] == method
    assert load_yaml_dict(run / "config.yaml")["train"]["mixed_precision"] == "bf16"
    steps = [r for r in metrics(run) if "train/loss" in r]
    assert len(steps) == int(overrides[0].split("=")[1]) * EPOCH_RECORDS // BATCH
    if stages:
        assert [r["train/stage"] for r in steps] == stages
    if method == "codi":  # the teacher task and the distillation, under bf16 autocast and LoRA r 128
        assert all(r["train/distill"] > 0 and r["train/ce_teacher"] > 0 and r["train/active_latents"] == 6
                   for r in steps)
