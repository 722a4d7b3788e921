"""GPU smoke check of the paper recipe at the paper's scale, through the real training entry points.

Run it through gpu/smoke.sh (options: --out, --deps, --python, --cpu, --check); one GPU (H100, 80 GB), under 10
minutes. Configs are the paper's (src/atp_latent/configs/paper/atp.yaml and atp_rl.yaml, loaded with
`load_config`) with short-run overrides only (data files, epoch length, epochs, checkpointing, run folder), so fp32
master weights with bf16 autocast, `optim.reset_each_epoch`, the separate trainable step decoder, batch 32 and c = 2
are what runs. The model is a randomly initialised LLaMA-3.2-1B-shaped LM (16 layers, d = 2048, 128256-token
vocabulary; no weights are downloaded) with a word-level tokenizer built on the synthetic benchmark; both are saved
with save_pretrained (in bf16, as the real checkpoint is stored) and the SFT run loads them through
`model.name_or_path`, the real-checkpoint path (`load_pretrained`).

Checks, one line each (`CHECK <name> PASS|FAIL key=value ...`); the exit code is 1 if any fails:
  paper_model      SFT's final/ holds the LM it loaded: 16 layers, d = 2048, 128256 rows (the latent tokens are
                   already in the tokenizer, so nothing is resized), saved in fp32 (the master weights).
  paper_config     the run's resolved config keeps the paper's knobs (fp32 master weights, bf16 autocast,
                   reset_each_epoch, separate trainable decoder, c = 2) and cuDNN attention off (deviations row
                   13); prints the batch (32 at full shape).
  sft_run          3 short ATP SFT epochs (`sft.train`) finish, write final/, train latent slots, replicas in sync.
                   Every epoch runs at the final stage (curriculum.stage_offset = max_latent_stage + 1: 20 latent
                   slots, the heaviest shape) on the same records, so the epochs have the same shapes.
  sft_memory_flat  GPU: train/peak_memory_gib of every epoch within --tolerance (default 5%) of epoch 1's, i.e. the
                   optimizer re-created each epoch does not pile up on the old ones. CPU: no CUDA peak memory, so
                   the metric must be absent; the run finishing is the check.
  sft_throughput   train/step_seconds and train/tokens_per_s are logged, finite and positive for every epoch.
  rl_grpo_step     one GRPO step (`rl.train_rl`, 16 questions x 8 rollouts) from the SFT run's final/ finishes with
                   train/first_ratio_dev == 0 exactly under bf16 (old and new log-probs scored alike) and replicas
                   in sync.
TIME lines: each SFT epoch's step seconds, tokens/s and peak memory; the RL step's timings (whatever it logs: among
them rollout_seconds and update_seconds, sampling and the minibatch updates, and plan_decode_share, the coherence
reward's plan decode over the step, at the 1B shape), its peak memory and what SFT left allocated; each phase's wall
time; free disk.

`--lora` checks the LoRA recipes instead (configs/paper/codi.yaml, colar.yaml, colar_rl.yaml; needs peft), on the
same model, at each recipe's own batch (CODI 128, CoLaR 256), 2 short epochs each, then one CoLaR-RL step:
  lora_codi_sft      CODI SFT from the base model finishes and writes final/ with its adapters
                     (final/lm_adapter, peft's format), the LM's own weights exactly as loaded (frozen: a layer's
                     query weights compared with the saved model's) and the adapters trained (some lora_B nonzero;
                     peft starts them at 0), every epoch's loss finite.
  lora_colar_sft     the same for CoLaR (from the base model here: the recipe starts from a CoT-SFT run).
  lora_colar_rl_step one CoLaR-RL GRPO step (16 questions x 8 rollouts, the recipe's minibatches of 8) from the
                     CoLaR run's final/: first_ratio_dev == 0 exactly, final/ keeps the adapters.

Disk (64 GB on the GPU machine): train.save_checkpoints=false (no optimizer state on disk), the model folder is
deleted once SFT has loaded it, and RL runs without validation, which would keep a best/ with optimizer state. At
1B that leaves SFT final/ (LM + decoder in fp32, ~10 GB), RL's last-step checkpoint (~20 GB: RL does not read
train.save_checkpoints) and RL final/ (~10 GB).

`--cpu` hides any GPU and runs the same checks at small shapes (llama-tiny, batch 4, one step per epoch, 4 latent slots, 2 questions
x 4 rollouts, 4-token answers) in well under a minute: what CI runs (tests/test_gpu_suite.py). `--out DIR` also
writes the summary to DIR/SMOKE.md (device, versions, command, every line).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "src" / "atp_latent" / "configs" / "paper"
LLAMA3_VOCAB = 128256


@dataclass
class Shape:
    preset: str
    batch_size: int
    steps_per_epoch: int
    questions: int
    group_size: int
    minibatch: int
    max_val: int
    latent_stage: int  # curriculum.max_latent_stage (the paper's 10: 20 latent slots with c = 2)
    new_tokens: int  # rl.max_new_tokens and rl.coherence_max_tokens (the paper's 16)
    codi_batch: int = 128  # --lora: the recipes' own batches (configs/paper/codi.yaml, colar.yaml)
    colar_batch: int = 256

    @property
    def records(self) -> int:
        return self.batch_size * self.steps_per_epoch


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        print(line, flush=True)

    def check(self, name: str, ok: bool, **info) -> None:
        if not ok:
            self.failed.append(name)
        self._emit(f"CHECK {name} {'PASS' if ok else 'FAIL'} {fmt(info)}".rstrip())

    def time(self, what: str, **info) -> None:
        self._emit(f"TIME {what} {fmt(info)}".rstrip())


def fmt(info: dict) -> str:
    def one(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list | tuple):
            return "[" + ",".join(one(x) for x in v) + "]"
        if v is None:
            return "n/a"
        return json.dumps(v[:300]) if isinstance(v, str) and (" " in v or not v) else str(v)

    return " ".join(f"{k}={one(v)}" for k, v in info.items())


def error_text(e: BaseException) -> str:
    traceback.print_exception(e, file=sys.stderr)
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def values(rows: list[dict], key: str) -> list:
    return [r[key] for r in rows if key in r]


def cuda_free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----- the model and data the runs load -----

def write_inputs(work: Path, shape: Shape, vocab: int | None, seed: int = 0, lora: bool = False
                 ) -> tuple[Path, Path, dict]:
    """Synthetic data files, and a random LM of the preset's shape with a word-level tokenizer, saved with
    save_pretrained; vocab None: the tokenizer's size; lora: enough records for the LoRA recipes' batches. Returns
    (data dir, model dir, facts about the model)."""

    from atp_latent.data.formats import write_jsonl
    from atp_latent.data.synthetic import SynthConfig, generate_benchmark
    from atp_latent.modeling.factory import build_tiny_model
    from atp_latent.modeling.tokenizer import build_word_tokenizer
    from atp_latent.training.sft import corpus_of

    n_train = max(shape.records, shape.questions,
                  *((shape.codi_batch * shape.steps_per_epoch, shape.colar_batch * shape.steps_per_epoch) if lora else ()))
    splits = generate_benchmark(SynthConfig(seed=seed, n_train=n_train, n_val=shape.max_val, n_test=4, n_ood=4))
    data = work / "data"
    for split in ("train", "val"):
        write_jsonl(data / f"{split}.jsonl", splits[split])
    tok = build_word_tokenizer(corpus_of(splits["train"] + splits["val"]))
    vocab = vocab or len(tok)
    lm = build_tiny_model(shape.preset, tok, seed=seed, vocab=vocab,
                          device="cuda" if torch.cuda.is_available() else "cpu")
    cfg = lm.config
    facts = {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": vocab,
             "params_m": sum(p.numel() for p in lm.parameters()) / 1e6}
    model_dir = work / "model"
    lm.to(torch.bfloat16).save_pretrained(model_dir)  # bf16 on disk, like the released Llama-3.2-1B
    tok.save_pretrained(model_dir)
    del lm
    cuda_free()
    return data, model_dir, facts


# ----- checks -----

def lm_on_disk(final: Path) -> dict:
    """Shape and weight dtype of the LM in a save_pretrained reasoner directory (final/lm)."""
    from safetensors import safe_open

    cfg = json.loads((final / "lm" / "config.json").read_text())
    for shard in sorted((final / "lm").glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            name = next((k for k in f.keys() if "embed_tokens" in k), None)
            if name is not None:
                dtype, rows = f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()[0]
                break
    else:
        raise FileNotFoundError(f"{final / 'lm'}: no embed_tokens weight in any *.safetensors")
    return {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "vocab": cfg["vocab_size"],
            "embedding_rows": rows, "dtype": dtype}


def check_paper_model(report: Report, sft: Path, facts: dict) -> None:
    try:
        disk = lm_on_disk(sft / "final")
    except Exception as e:  # noqa: BLE001 - a check reports any failure as FAIL
        report.check("paper_model", False, error=error_text(e))
        return
    ok = (disk["layers"], disk["hidden"], disk["vocab"], disk["embedding_rows"]) == \
        (facts["layers"], facts["hidden"], facts["vocab"], facts["vocab"]) and disk["dtype"] == "F32"
    report.check("paper_model", ok, **disk, params_m=facts["params_m"], loaded_from="model.name_or_path")


def check_paper_config(report: Report, sft: Path) -> None:
    from atp_latent.configtools import load_yaml_dict

    c = load_yaml_dict(sft / "config.yaml")
    got = {"dtype": c["model"]["dtype"], "mixed_precision": c["train"]["mixed_precision"],
           "reset_each_epoch": c["optim"]["reset_each_epoch"], "decoder": c["method"]["decoder_mode"],
           "decoder_trainable": c["method"]["decoder_trainable"],
           "batch": c["optim"]["batch_size"], "c": c["method"]["latents_per_step"],
           # cuDNN attention off (train.cudnn_attention; its bf16 backward gave NaN on an H200, pytorch#196678),
           # in the run's config and in this process after SFT ran
           "cudnn_attention": c["train"]["cudnn_attention"], "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled()}
    want = {"dtype": "float32", "mixed_precision": "bf16", "reset_each_epoch": True, "decoder": "separate",
            "decoder_trainable": True, "c": 2, "cudnn_attention": False, "cudnn_sdp": False}
    report.check("paper_config", all(got[k] == v for k, v in want.items()), **got)


def check_sft(report: Report, sft: Path, epochs: int, cpu: bool, tolerance: float) -> None:
    rows = read_metrics(sft)
    stages = sorted(set(values(rows, "train/stage")))
    latents = values(rows, "train/active_latents")
    ok = (sft / "final").is_dir() and 1 in values(rows, "train/finished") \
        and values(rows, "train/replicas_in_sync") == [1] and len(set(values(rows, "train/epoch"))) == epochs \
        and bool(latents) and min(latents) > 0
    report.check("sft_run", ok, epochs=len(set(values(rows, "train/epoch"))), stages=stages,
                 active_latents=max(latents, default=None), final=(sft / "final").is_dir())

    peaks = values(rows, "train/peak_memory_gib")
    if cpu:
        report.check("sft_memory_flat", not peaks and ok, peak_gib="n/a(cpu)", run_finished=ok)
    else:
        flat = len(peaks) == epochs and all(abs(p - peaks[0]) <= tolerance * peaks[0] for p in peaks)
        report.check("sft_memory_flat", flat, peak_gib=peaks, tolerance=f"{tolerance:.0%}_of_epoch_1")

    secs, tps = values(rows, "train/step_seconds"), values(rows, "train/tokens_per_s")
    good = len(secs) == len(tps) == epochs and all(math.isfinite(v) and v > 0 for v in secs + tps)
    report.check("sft_throughput", good, step_seconds=secs, tokens_per_s=tps)
    stage_of = {r["train/epoch"]: r["train/stage"] for r in rows if "train/stage" in r and "train/epoch" in r}
    for r in (r for r in rows if "train/step_seconds" in r):
        epoch = r.get("train/epoch")
        report.time(f"sft epoch={epoch + 1 if epoch is not None else '?'}", stage=stage_of.get(epoch),
                    step_seconds=r["train/step_seconds"], tokens_per_s=r.get("train/tokens_per_s"),
                    peak_gib=r.get("train/peak_memory_gib"))


def check_rl(report: Report, rl: Path, rollouts: int, peak_gib: float | None, before_gib: float | None) -> None:
    rows = read_metrics(rl)
    step = next((r for r in rows if "train/first_ratio_dev" in r), {})
    dev = step.get("train/first_ratio_dev")
    ok = (rl / "final").is_dir() and dev == 0 and values(rows, "train/replicas_in_sync") == [1]
    report.check("rl_grpo_step", ok, rollouts=rollouts, first_ratio_dev=dev,
                 replicas_in_sync=values(rows, "train/replicas_in_sync"), reward=step.get("train/reward"),
                 active_latents=step.get("train/active_latents"), final=(rl / "final").is_dir())
    timing = {k.removeprefix("train/"): v for k, v in step.items()
              if any(s in k for s in ("seconds", "per_s", "memory", "share")) and isinstance(v, int | float)}
    report.time("rl step", **timing, peak_gib=peak_gib, allocated_before_rl_gib=before_gib)


def first_layer_query(folder: Path) -> torch.Tensor:
    """Layer 0's query projection weight from a save_pretrained folder (the model given to SFT, or a run's final/lm),
    in fp32."""
    from safetensors import safe_open

    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            name = next((k for k in f.keys() if k.endswith("layers.0.self_attn.q_proj.weight")), None)
            if name is not None:
                return f.get_tensor(name).float()
    raise FileNotFoundError(f"{folder}: no layers.0.self_attn.q_proj.weight in any *.safetensors")


def check_lora_sft(report: Report, name: str, run: Path, model_dir: Path, epochs: int) -> None:
    """A LoRA recipe's SFT run: finished with final/, adapters saved and trained, the LM's own weights untouched."""
    from safetensors.torch import load_file

    rows = read_metrics(run)
    try:
        adapters = load_file(str(run / "final" / "lm_adapter" / "adapter_model.safetensors"))
        frozen = torch.equal(first_layer_query(run / "final" / "lm"), first_layer_query(model_dir))
    except Exception as e:  # noqa: BLE001 - a check reports any failure as FAIL
        report.check(name, False, error=error_text(e))
        return
    b = [v for k, v in adapters.items() if "lora_B" in k]
    trained = sum(bool(v.abs().max() > 0) for v in b)
    losses = values(rows, "train/loss")
    ok = (run / "final").is_dir() and 1 in values(rows, "train/finished") and frozen and trained > 0 \
        and len(set(values(rows, "train/epoch"))) == epochs and bool(losses) and all(math.isfinite(v) for v in losses)
    report.check(name, ok, epochs=len(set(values(rows, "train/epoch"))), lm_weights_unchanged=frozen,
                 lora_b_trained=f"{trained}/{len(b)}", adapter_params_m=sum(v.numel() for v in adapters.values()) / 1e6,
                 last_loss=losses[-1] if losses else None)
    for r in (r for r in rows if "train/step_seconds" in r):
        epoch = r.get("train/epoch")
        report.time(f"{name} epoch={epoch + 1 if epoch is not None else '?'}", step_seconds=r["train/step_seconds"],
                    tokens_per_s=r.get("train/tokens_per_s"), peak_gib=r.get("train/peak_memory_gib"))


def check_lora_rl(report: Report, run: Path, rollouts: int, peak_gib: float | None) -> None:
    rows = read_metrics(run)
    step = next((r for r in rows if "train/first_ratio_dev" in r), {})
    dev = step.get("train/first_ratio_dev")
    kept = (run / "final" / "lm_adapter" / "adapter_model.safetensors").is_file()
    ok = (run / "final").is_dir() and dev == 0 and kept
    report.check("lora_colar_rl_step", ok, rollouts=rollouts, first_ratio_dev=dev, adapters_in_final=kept,
                 reward=step.get("train/reward"), active_latents=step.get("train/active_latents"))
    timing = {k.removeprefix("train/"): v for k, v in step.items()
              if any(s in k for s in ("seconds", "per_s", "memory")) and isinstance(v, int | float)}
    report.time("lora_colar_rl step", **timing, peak_gib=peak_gib)


def run_lora(report: Report, shape: Shape, common: list[str], model_dir: Path, cpu: bool) -> None:
    """The LoRA recipes (--lora): CODI and CoLaR SFT from the saved model, then one CoLaR-RL step."""
    from atp_latent.config import load_config
    from atp_latent.training.sft import train

    epochs, runs = 2, {}
    for name, recipe, batch in (("codi", "codi.yaml", shape.codi_batch), ("colar", "colar.yaml", shape.colar_batch)):
        records = batch * shape.steps_per_epoch
        overrides = common + [
            f"model.name_or_path={model_dir}", "model.init_from=null", f"data.max_train={records}",
            f"data.epoch_size={records}", f"optim.batch_size={batch}", f"train.epochs={epochs}",
            "train.eval_every_epoch=false", "train.log_every=1", f"name={name}"]
        run, err = run_phase(report, f"lora_{name}_sft", lambda r=recipe, o=overrides: train(load_config(str(PAPER / r), o)))
        cuda_free()
        if err:
            report.check(f"lora_{name}_sft", False, error=err)
            continue
        runs[name] = run
        check_lora_sft(report, f"lora_{name}_sft", run, model_dir, epochs)
    if "colar" not in runs:
        report.check("lora_colar_rl_step", False, error="no CoLaR run (see lora_colar_sft)")
        return
    rl, err, peak = grpo_step(report, "lora_colar_rl", "colar_rl.yaml", runs["colar"] / "final", common, shape, cpu,
                              minibatch=min(8, shape.minibatch))  # the recipe's minibatches of 8
    if err:
        report.check("lora_colar_rl_step", False, error=err)
    else:
        check_lora_rl(report, rl, shape.questions * shape.group_size, peak)


# ----- the runs -----

def grpo_step(report: Report, what: str, recipe: str, init_from: Path, common: list[str], shape: Shape, cpu: bool,
              minibatch: int | None = None, extra: tuple[str, ...] | list[str] = ()):
    """One GRPO step of the paper RL recipe `recipe` from `init_from` at the check's RL shape, without validation.
    Returns (run dir, error, peak GPU memory in GiB over the step; None on CPU)."""
    from atp_latent.config import load_config
    from atp_latent.training.rl import train_rl

    overrides = common + [
        f"model.init_from={init_from}", "rl.steps=1", f"rl.questions_per_step={shape.questions}",
        f"rl.group_size={shape.group_size}", f"rl.minibatch_size={minibatch or shape.minibatch}",
        f"rl.max_new_tokens={shape.new_tokens}", *extra, f"eval.max_new_tokens={shape.new_tokens}", "data.val=null",
        f"name={recipe.removesuffix('.yaml')}"]
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    run, err = run_phase(report, what, lambda: train_rl(load_config(str(PAPER / recipe), overrides)))
    return run, err, None if cpu else torch.cuda.max_memory_allocated() / 2**30


def run_phase(report: Report, what: str, fn):
    """Run a training entry point with its prints sent to stderr (stdout is the summary); time it."""
    t = time.time()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            out = fn()
        return out, None
    except Exception as e:  # noqa: BLE001 - reported as the failing check's error
        return None, error_text(e)
    finally:
        report.time(f"{what} wall", seconds=time.time() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="hide any GPU; small shapes on CPU (what CI runs)")
    ap.add_argument("--out", default=None, help="also write the summary to OUT/SMOKE.md")
    ap.add_argument("--workdir", default=None, help="where runs are written (default: a temporary folder, removed)")
    ap.add_argument("--preset", default=None, help="model shape (default llama-1b-shape; llama-tiny with --cpu)")
    ap.add_argument("--vocab", type=int, default=None,
                    help=f"vocabulary rows (default {LLAMA3_VOCAB}, LLaMA-3's; the tokenizer's size with --cpu)")
    ap.add_argument("--batch-size", type=int, default=None, help="SFT batch (default 32; 4 with --cpu)")
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="SFT steps per epoch (default 3; 1 with --cpu)")
    ap.add_argument("--questions", type=int, default=None, help="RL questions per step (default 16; 2 with --cpu)")
    ap.add_argument("--group-size", type=int, default=None, help="RL rollouts per question (default 8; 4 with --cpu)")
    ap.add_argument("--tolerance", type=float, default=0.05, help="sft_memory_flat: allowed change vs epoch 1")
    ap.add_argument("--lora", action="store_true",
                    help="check the LoRA recipes (CODI, CoLaR, CoLaR-RL) instead of ATP's; needs peft")
    args = ap.parse_args()
    cpu = args.cpu
    if cpu:  # hide any GPU before CUDA initialises: the training entry points pick the device themselves
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if not cpu and not torch.cuda.is_available():
        print("no CUDA device: this is the GPU check; use --cpu for the small CPU version", file=sys.stderr)
        return 2
    # CPU: bf16 autocast is emulated on most CPUs (~10x slower than fp32), hence 4 latent slots and short answers
    if cpu:
        shape = Shape("llama-tiny", batch_size=4, steps_per_epoch=1, questions=2, group_size=4, minibatch=4,
                      max_val=4, latent_stage=2, new_tokens=4, codi_batch=4, colar_batch=4)
    else:  # the paper's batch, c * max_latent_stage = 20 latent slots, RL shape and answer length
        shape = Shape("llama-1b-shape", batch_size=32, steps_per_epoch=3, questions=16, group_size=8, minibatch=16,
                      max_val=32, latent_stage=10, new_tokens=16)
    shape.preset, shape.batch_size = args.preset or shape.preset, args.batch_size or shape.batch_size
    shape.steps_per_epoch = args.steps_per_epoch or shape.steps_per_epoch
    shape.questions, shape.group_size = args.questions or shape.questions, args.group_size or shape.group_size
    vocab = args.vocab or (None if cpu else LLAMA3_VOCAB)  # LLaMA-3's: embedding and logits cost what they do
    epochs = 3
    report = Report()
    device = "cpu" if cpu else torch.cuda.get_device_name()
    header = ("lora " if args.lora else "") + (f"preset={shape.preset} vocab={vocab or 'tokenizer'} batch={shape.batch_size} "
              f"steps_per_epoch={shape.steps_per_epoch} latent_slots={2 * shape.latent_stage} "
              f"rl={shape.questions}x{shape.group_size}")
    print(f"# device={device!r} {header}", flush=True)
    header = (device, header)

    from atp_latent.config import load_config
    from atp_latent.training.sft import train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-smoke-"))
    try:
        built, err = run_phase(report, "build", lambda: write_inputs(work, shape, vocab, lora=args.lora))
        if err:
            report.check("paper_model", False, error=err)
            return finish(report, args, header)
        data, model_dir, facts = built
        report.time("disk", free_gib=shutil.disk_usage(work).free / 2**30, workdir=str(work))
        common = [f"data.train={data / 'train.jsonl'}", f"data.val={data / 'val.jsonl'}",
                  f"data.max_val={shape.max_val}", f"output_dir={work / 'runs'}", "train.save_checkpoints=false"]
        if args.lora:
            run_lora(report, shape, common, model_dir, cpu)
            return finish(report, args, header)
        sft_set = common + [
            f"model.name_or_path={model_dir}", f"data.max_train={shape.records}", f"data.epoch_size={shape.records}",
            f"optim.batch_size={shape.batch_size}", f"train.epochs={epochs}", "train.eval_every_epoch=false",
            "train.log_every=1",
            "curriculum.epochs_per_stage=1", f"curriculum.max_latent_stage={shape.latent_stage}",
            f"curriculum.stage_offset={shape.latent_stage + 1}", "name=atp"]
        sft, err = run_phase(report, "sft", lambda: train(load_config(str(PAPER / "atp.yaml"), sft_set)))
        shutil.rmtree(model_dir, ignore_errors=True)  # loaded; frees disk for the RL checkpoints
        cuda_free()
        if err:
            for name in ("paper_model", "paper_config", "sft_run", "sft_memory_flat", "sft_throughput", "rl_grpo_step"):
                report.check(name, False, error=err if name == "sft_run" else "no SFT run (see sft_run)")
            return finish(report, args, header)
        check_paper_model(report, sft, facts)
        check_paper_config(report, sft)
        check_sft(report, sft, epochs, cpu, args.tolerance)

        left = None if cpu else torch.cuda.memory_allocated() / 2**30  # what SFT left allocated: should be ~0
        rl, err, peak = grpo_step(report, "rl", "atp_rl.yaml", sft / "final", common, shape, cpu,
                                  extra=[f"rl.coherence_max_tokens={shape.new_tokens}"])
        if err:
            report.check("rl_grpo_step", False, error=err)
        else:
            check_rl(report, rl, shape.questions * shape.group_size, peak, left)
        return finish(report, args, header)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def finish(report: Report, args, header: tuple[str, str]) -> int:
    """The SUMMARY line, and OUT/SMOKE.md with --out; the exit code. header: (device name, shape line)."""
    n = sum(line.startswith("CHECK ") for line in report.lines)
    verdict = "PASS" if not report.failed else "FAIL"
    summary = f"SUMMARY {verdict} {n - len(report.failed)}/{n} checks passed" + \
        (f" failed={','.join(report.failed)}" if report.failed else "")
    print(summary, flush=True)
    if args.out:
        import transformers

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        command = " ".join(["bash gpu/smoke.sh", *sys.argv[1:]])
        text = "\n".join([
            "# GPU smoke check of the paper recipe", "",
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            f"- device: {header[0]}",
            f"- shape: {header[1]}",
            f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
            f"- command: `{command}`",
            f"- result: {summary.removeprefix('SUMMARY ')}", "",
            "What each check means: see the docstring of gpu/smoke.py.", "",
            "```", *report.lines, summary, "```", "",
        ])
        (out / "SMOKE.md").write_text(text)
        print(f"# wrote {out / 'SMOKE.md'}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
