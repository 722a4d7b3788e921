"""One SFT loop for every method (CoT-SFT, No-CoT, Coconut, SIM-CoT, ATP-Latent), on accelerate.

Read top to bottom: build the model, then per epoch pick the curriculum stage, shuffle, build the
stage's sequences, step the optimizer, log, checkpoint; validate at each epoch end and keep the best.
"""

from __future__ import annotations

import atexit
import functools
import math
import random
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from transformers.utils import logging as hf_logging

from atp_latent.config import RunConfig
from atp_latent.configtools import to_dict
from atp_latent.data.records import Problem
from atp_latent.data.sequences import Curriculum, SequenceBuilder, collate, sample_stage
from atp_latent.evaluation.benchmarks import load_data
from atp_latent.evaluation.evaluate import evaluate
from atp_latent.modeling.factory import build_tiny_model, load_pretrained
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.progress import progress_bar
from atp_latent.training.runs import (
    RunDir,
    atomic_checkpoint,
    replicas_in_sync,
    resume_point,
    save_training_checkpoint,
    tracker_log_with,
)

MULTI_PROCESS = (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def curriculum_of(cfg: RunConfig) -> Curriculum:
    c = cfg.curriculum
    return Curriculum(cfg.method.latents_per_step, c.epochs_per_stage, c.max_latent_stage, c.stage_offset,
                      c.pad_latent_to_max, c.uniform_prob)


def spec_of(cfg: RunConfig) -> ReasonerSpec:
    m = cfg.method
    return ReasonerSpec.for_method(
        m.name, latents_per_step=m.latents_per_step, use_vae=m.use_vae, use_stop_head=m.use_stop_head,
        use_decoder=m.use_decoder, decoder_mode=m.decoder_mode, decoder_trainable=m.decoder_trainable,
        beta_kl=m.beta_kl, stop_loss_positions=m.stop_loss_positions,
        stop_head_detached=m.stop_head_detached, decoder_weight=m.decoder_weight,
        latent_head_residual=m.latent_head_residual, init_logvar=m.init_logvar,
        max_latent_stage=cfg.curriculum.max_latent_stage,
    )


def corpus_of(problems: list[Problem]) -> list[str]:
    return [p.question for p in problems] + ["\n".join(f"<<{s}>>" for s in p.steps) + "\n### " + p.answer
                                             for p in problems]


def build_reasoner(cfg: RunConfig, train: list[Problem]) -> tuple[LatentReasoner, object]:
    """The model a run starts from: a checkpoint, a HF model, or a tiny preset with a corpus tokenizer."""
    spec = spec_of(cfg)
    dtype = DTYPES[cfg.model.dtype]
    if cfg.model.init_from:
        return LatentReasoner.from_pretrained(cfg.model.init_from, dtype=dtype, spec=spec)
    if cfg.model.name_or_path:
        lm, tok = load_pretrained(cfg.model.name_or_path, dtype=dtype)
        return LatentReasoner(lm, spec), tok
    tok = build_word_tokenizer(corpus_of(train), max_vocab=cfg.model.max_vocab)
    lm = build_tiny_model(cfg.model.preset, tok, seed=cfg.train.seed, dtype=dtype)
    return LatentReasoner(lm, spec), tok


def warmup_then_decay(lr: float, warmup_steps: int, schedule: str, step: int, frac: float) -> float:
    """Linear warmup over warmup_steps, then constant or cosine decay to 10% of lr at frac = 1 (run progress)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "constant":
        return lr * warm
    return lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def learning_rate(cfg: RunConfig, step: int, total_steps: int) -> float:
    """optim.lr on OptimConfig.schedule. Progress counts optimizer steps only, never time: train.max_minutes is a
    safety stop, so the same config gives the same run on any machine."""
    o = cfg.optim
    return warmup_then_decay(o.lr, o.warmup_steps, o.schedule, step, step / max(total_steps, 1))


def bucket_by_length(order: list[int], problems: list[Problem], chunk: int) -> list[int]:
    """Sort each chunk of the shuffled order by length, so a batch holds similar lengths and pads little."""
    def size(i: int) -> int:
        return len(problems[i].question) + sum(len(s) for s in problems[i].steps)

    return [i for k in range(0, len(order), chunk) for i in sorted(order[k: k + chunk], key=size)]


def first_nonfinite_grad(model: torch.nn.Module) -> str:
    """The name of the first parameter, in the model's order, whose gradient holds a NaN or an inf."""
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name
    return "no parameter (the norm itself overflowed)"


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def prepare_run(cfg: RunConfig, resume: bool, find_unused_parameters: bool):
    """Threads, accelerator, seed, data, and the run path with its checkpoint to resume from. Everything a user
    can get wrong is checked here, before anything is written (no partial run directory)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.backends.cuda.enable_cudnn_sdp(cfg.train.cudnn_attention)  # see TrainConfig.cudnn_attention
    hf_logging.disable_progress_bar()
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != cfg.train.mixed_precision \
            and state.get("distributed_type") not in MULTI_PROCESS:
        # A second run in one process (a notebook, a test) may change precision; accelerate's state is global.
        AcceleratorState._reset_state(reset_partial_state=True)
    run_path = Path(cfg.output_dir) / (cfg.name or time.strftime("%Y%m%d-%H%M%S"))
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # on CPU, multi-process runs need cpu=True to pick gloo
        mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.optim.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        log_with=tracker_log_with(cfg.train.report_to, run_path),  # started by open_run_dir
    )
    if accelerator.num_processes > 1:
        destroy_process_group_at_exit()
    set_seed(cfg.train.seed)
    train_set = load_data(cfg.data.train)[: cfg.data.max_train]
    val_set = load_data(cfg.data.val, split="validation")[: cfg.data.max_val] if cfg.data.val else []
    ckpt = resume_point(run_path, cfg) if resume else None
    return accelerator, train_set, val_set, run_path, ckpt


@functools.cache
def destroy_process_group_at_exit() -> None:
    """Destroy the process group when the interpreter exits (registered once per process): left alive, gloo's
    worker threads can abort the exit ("terminate called without an active exception", SIGABRT), which turns a
    finished multi-process run into a failed one. At exit, not after a run, so one process may run several."""
    def destroy():
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def open_run_dir(run_path: Path, cfg: RunConfig, resume: bool, ckpt: Path | None,
                 accelerator: Accelerator | None = None) -> RunDir:
    """The run directory (main process only), with the resolved config and its experiment trackers (started
    through `accelerator` when given); a resumed run forgets the metrics logged after its checkpoint, since
    those steps are redone (all of them when it was killed before its first checkpoint: it starts over)."""
    run = RunDir.create(run_path.parent, run_path.name, resume=resume, report_to=cfg.train.report_to)
    run.save_config(cfg)
    if resume:
        run.truncate_metrics_after(int(ckpt.name.split("-")[-1]) if ckpt is not None else -1)
    run.start_trackers(accelerator, config=to_dict(cfg))
    return run


def finish_run(accelerator: Accelerator, model, run: RunDir | None, tokenizer, step: int, minutes: float,
               scheduled_steps: int | None = None) -> None:
    """Check that every process holds the same parameters, then write RUN/final and close the run. A run that
    ends before its `scheduled_steps` was cut by the wall-clock safety stop (train.max_minutes): it says so, and
    `report.run_cost` flags it, since its numbers are not its schedule's."""
    in_sync = replicas_in_sync(accelerator, model)
    if not in_sync:
        raise RuntimeError("parameters differ across processes: gradients were not synchronised")
    if run is None:
        return
    run.log({"train/processes": accelerator.num_processes, "train/replicas_in_sync": int(in_sync)}, step)
    with atomic_checkpoint(run.path / "final") as tmp:
        accelerator.unwrap_model(model).save_pretrained(tmp, tokenizer)
    run.log({"train/finished": 1, "train/minutes": minutes}
            | ({"train/scheduled_steps": scheduled_steps} if scheduled_steps else {}), step)
    run.close()
    if scheduled_steps and step < scheduled_steps:
        print(f"warning: {run.path.name} stopped at step {step} of {scheduled_steps}: train.max_minutes "
              f"({minutes:.1f} min) ran out, so this run did not follow its schedule", flush=True)
    print(f"run directory: {run.path}  (final weights: {run.path / 'final'})")


def save_checkpoint(path: Path, accelerator: Accelerator, model, tokenizer, optimizer, progress: dict) -> None:
    """A resumable checkpoint; with optimizer=None the weights only (train.save_checkpoints=false)."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    save_training_checkpoint(path, accelerator.unwrap_model(model), tokenizer, optimizer, progress, rng)


def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Forget every moment and step count (the reference re-creates AdamW each epoch). Done in place: a new
    optimizer passed to accelerator.prepare would be added to the accelerator's list, and every old AdamW state
    (~20 GB at 1B with a separate decoder) would stay alive."""
    optimizer.state.clear()


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Run SFT as configured; returns the run directory. Final weights are in RUN/final."""
    accelerator, train_set, val_set, run_path, ckpt = prepare_run(
        cfg, resume, find_unused_parameters=cfg.method.name not in ("cot", "nocot"))
    is_main = accelerator.is_main_process
    if ckpt is not None:
        model, tok = LatentReasoner.from_pretrained(ckpt / "model", dtype=DTYPES[cfg.model.dtype], spec=spec_of(cfg))
    else:
        model, tok = build_reasoner(cfg, train_set)
    run = open_run_dir(run_path, cfg, resume, ckpt, accelerator) if is_main else None
    progress = {"epoch": 0, "batch": 0, "step": 0, "best_val": -1.0, "elapsed": 0.0}
    cur = curriculum_of(cfg)
    builder = SequenceBuilder(tok, cfg.method.name, cur, mask_surplus=model.spec.use_stop_head)
    optimizer = make_optimizer(model, cfg)
    if ckpt is not None:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        progress.update(state["progress"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if is_main:
            print(f"resumed from {ckpt} (epoch {progress['epoch']}, batch {progress['batch']}, step {progress['step']})")
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    bs, world, rank = cfg.optim.batch_size, accelerator.num_processes, accelerator.process_index
    per_epoch = max(1, min(len(train_set), cfg.data.epoch_size or len(train_set)) // (bs * world))
    total_steps = min(cfg.train.max_steps or 10**12, per_epoch * cfg.train.epochs)
    t0 = time.time() - progress["elapsed"]
    out_of_time = False
    keep_state = optimizer if cfg.train.save_checkpoints else None  # None: weights only in best/ and epoch-N/
    for epoch in range(progress["epoch"], cfg.train.epochs):
        if cfg.optim.reset_each_epoch and epoch > 0 and progress["batch"] == 0:
            reset_optimizer(optimizer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        epoch_start, epoch_tokens, epoch_steps = time.time(), 0, 0
        stage = cur.stage(epoch)
        rng = random.Random(cfg.train.seed * 100003 + epoch)
        order = list(range(len(train_set)))
        rng.shuffle(order)
        order = order[: cfg.data.epoch_size]
        # Every process sees the same order and takes its slice of each global batch.
        global_bs = bs * world
        if cfg.data.length_buckets > 1:
            order = bucket_by_length(order, train_set, global_bs * cfg.data.length_buckets)
        batches = [order[i: i + global_bs] for i in range(0, len(order) - global_bs + 1, global_bs)] or [order]
        if cfg.data.length_buckets > 1:
            rng.shuffle(batches)
        stages = [[sample_stage(cur, epoch, rng, len(train_set[j].steps)) for j in b] for b in batches]
        model.train()
        bar = progress_bar(total=len(batches), initial=progress["batch"], desc=f"{cfg.method.name} epoch {epoch} stage {stage}",
                   disable=not is_main, leave=False)
        for bi in range(progress["batch"], len(batches)):
            mine = batches[bi][rank * bs: (rank + 1) * bs]
            st = stages[bi][rank * bs: (rank + 1) * bs]
            batch = collate([builder.build(train_set[j], s) for j, s in zip(mine, st)], tok.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                out = model(batch)
                if not torch.isfinite(out["loss"]):
                    bad = [k for k in ("ce", "kl", "decoder", "stop") if not torch.isfinite(out[k])]
                    raise FloatingPointError(f"non-finite loss at step {progress['step']} (term: {', '.join(bad) or 'loss'})")
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients:  # max_grad_norm 0: no clipping (inf), the norm is still checked
                    norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm or float("inf"))
                    if not torch.isfinite(norm):  # stepping would write NaN into the weights: stop, naming where
                        raise FloatingPointError(f"non-finite gradient at step {progress['step']} (loss "
                                                 f"{out['loss'].item():.4g}; first in {first_nonfinite_grad(model)})")
                for g in optimizer.param_groups:
                    g["lr"] = learning_rate(cfg, progress["step"], total_steps)
                optimizer.step()
                optimizer.zero_grad()
            progress["batch"] = bi + 1
            epoch_tokens += int(batch["prefix_mask"].sum() + batch["active"].sum() + batch["suffix_mask"].sum())
            epoch_steps += 1
            if accelerator.sync_gradients:
                progress["step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss'].item():.3f}", lat=f"{out['active_latents'].item():.1f}")
            if progress["step"] % cfg.train.log_every == 0:
                # Averaged over processes, so a run's curve does not depend on how many there are.
                logged = {k: accelerator.reduce(v.detach(), "mean").item() for k, v in out.items()}
                if is_main:
                    run.log({f"train/{k}": v for k, v in logged.items()} | {"train/stage": stage, "train/epoch": epoch},
                            progress["step"])
            progress["elapsed"] = time.time() - t0
            if cfg.train.checkpoint_every and progress["step"] % cfg.train.checkpoint_every == 0 and is_main \
                    and cfg.train.save_checkpoints:
                save_checkpoint(run.checkpoint_dir_for(progress["step"]), accelerator, model, tok, optimizer, progress)
                run.prune_checkpoints(cfg.train.keep_last)
            if cfg.train.max_steps and progress["step"] >= cfg.train.max_steps:
                out_of_time = True
            if cfg.train.max_minutes:  # one decision for every process: each has its own clock
                if progress["elapsed"] > 60 * cfg.train.max_minutes:
                    accelerator.set_trigger()
                out_of_time = accelerator.check_trigger() or out_of_time
            if out_of_time:
                break
        bar.close()
        seconds = time.time() - epoch_start
        tokens = accelerator.reduce(torch.tensor(float(epoch_tokens), device=device), "sum").item()
        speed = {"train/step_seconds": seconds / max(epoch_steps, 1), "train/tokens_per_s": tokens / max(seconds, 1e-9)}
        if torch.cuda.is_available():
            speed["train/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if is_main:
            run.log(speed | {"train/epoch": epoch}, progress["step"])
        epoch_done = progress["batch"] >= len(batches)
        if epoch_done:
            progress["epoch"], progress["batch"] = epoch + 1, 0
        if is_main:
            if val_set and cfg.train.eval_every_epoch and (epoch_done or out_of_time):
                acc = validate(accelerator.unwrap_model(model), builder, val_set, cfg, device)[0].accuracy
                run.log({"eval/val_accuracy": acc, "train/stage": stage}, progress["step"])
                # The best checkpoint is chosen on the validation split, never on test (METHOD.md §7).
                if acc > progress["best_val"]:
                    progress["best_val"] = acc
                    save_checkpoint(run.path / "best", accelerator, model, tok, keep_state, progress)
            if cfg.train.save_checkpoints:
                save_checkpoint(run.checkpoint_dir_for(progress["step"]), accelerator, model, tok, optimizer, progress)
            if epoch_done and epoch + 1 in cfg.train.keep_epochs:
                save_checkpoint(run.path / f"epoch-{epoch + 1}", accelerator, model, tok, keep_state, progress)
            run.prune_checkpoints(cfg.train.keep_last)
        accelerator.wait_for_everyone()
        if out_of_time:
            break

    finish_run(accelerator, model, run, tok, progress["step"], progress["elapsed"] / 60, total_steps)
    if run is not None:
        run_path = run.path
    accelerator.wait_for_everyone()
    return run_path


def validate(model: LatentReasoner, builder: SequenceBuilder, val_set: list[Problem], cfg: RunConfig, device):
    """Greedy evaluation on the validation split (leaves the model in eval mode); returns the EvalSummary and
    whether each problem was answered right (in val_set's order)."""
    max_new = cfg.eval.cot_max_new_tokens if cfg.method.name == "cot" else cfg.eval.max_new_tokens
    summary, rows = evaluate(model, builder, val_set, batch_size=cfg.eval.batch_size, max_new_tokens=max_new,
                             device=device, progress=False)
    return summary, [bool(r["correct"]) for r in rows]
