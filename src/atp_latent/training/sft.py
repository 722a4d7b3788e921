"""One SFT loop for every method (CoT-SFT, No-CoT, Coconut, SIM-CoT, ATP-Latent), on accelerate.

Read top to bottom: build the model, then per epoch pick the curriculum stage, shuffle, build the
stage's sequences, step the optimizer, log, checkpoint; validate at each epoch end and keep the best.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import math
import random
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object, set_seed
from transformers.utils import logging as hf_logging

from atp_latent.config import RunConfig
from atp_latent.configtools import to_dict
from atp_latent.data.internalize import RemovalSchedule
from atp_latent.data.records import Problem
from atp_latent.data.sequences import Curriculum, SequenceBuilder, collate, sample_stage
from atp_latent.evaluation.datasets import load_data
from atp_latent.evaluation.evaluate import evaluate
from atp_latent.modeling.factory import build_tiny_model, load_pretrained
from atp_latent.modeling.lora import add_lora_to_reasoner
from atp_latent.modeling.methods import get_method
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.progress import progress_bar
from atp_latent.training.guards import NonFiniteGuard, first_nonfinite_grad
from atp_latent.training.runs import (
    RunDir,
    atomic_checkpoint,
    check_resume_budget,
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
    """The method's ReasonerSpec: every `method.*` key that is a spec field (None keeps the method's default)."""
    m = cfg.method
    shared = {f.name: getattr(m, f.name) for f in dataclasses.fields(ReasonerSpec)
              if f.name not in ("method", "max_latent_stage") and hasattr(m, f.name)}
    return ReasonerSpec.for_method(m.name, **shared, max_latent_stage=cfg.curriculum.max_latent_stage)


def corpus_of(problems: list[Problem]) -> list[str]:
    return [p.question for p in problems] + ["\n".join(f"<<{s}>>" for s in p.steps) + "\n### " + p.answer
                                             for p in problems]


def build_reasoner(cfg: RunConfig, train: list[Problem]) -> tuple[LatentReasoner, object]:
    """The model a run starts from: a checkpoint, a HF model, or a tiny preset with a corpus tokenizer."""
    spec = spec_of(cfg)
    m = cfg.model
    dtype = DTYPES[m.dtype]
    if m.init_from:
        model, tok = LatentReasoner.from_pretrained(m.init_from, dtype=dtype, spec=spec)
    elif m.name_or_path:
        lm, tok = load_pretrained(m.name_or_path, dtype=dtype)
        model = LatentReasoner(lm, spec)
    else:
        tok = build_word_tokenizer(corpus_of(train), max_vocab=m.max_vocab)
        model = LatentReasoner(build_tiny_model(m.preset, tok, seed=cfg.train.seed, dtype=dtype), spec)
    # model.lora_r: adapters on the LM and a trainable separate decoder (copied from the LM before, so it gets its
    # own); a LoRA checkpoint's adapters are kept (modeling/lora.py)
    add_lora_to_reasoner(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules,
                         source=f"model.init_from {m.init_from}")
    return model, tok


def removal_schedule(cfg: RunConfig) -> RemovalSchedule:
    c = cfg.curriculum
    return RemovalSchedule(c.remove_per_epoch, c.remove_all_beyond, c.removal_lambda, c.remove_start_from)


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


def batches_per_epoch(cfg: RunConfig, n_train: int, world: int) -> int:
    """Global batches (batch_size x processes records) in an epoch of data.epoch_size records (or all)."""
    return max(1, min(n_train, cfg.data.epoch_size or n_train) // (cfg.optim.batch_size * world))


def scheduled_steps(cfg: RunConfig, n_batches: int) -> int:
    """Optimizer steps the run is scheduled for, over which the learning-rate schedule runs: each epoch's batches in
    windows of optim.grad_accum (an epoch's last window may be shorter), times train.epochs, capped by
    train.max_steps."""
    return min(cfg.train.max_steps or 10**12, math.ceil(n_batches / cfg.optim.grad_accum) * cfg.train.epochs)


def bucket_by_length(order: list[int], problems: list[Problem], chunk: int) -> list[int]:
    """Sort each chunk of the shuffled order by length, so a batch holds similar lengths and pads little."""
    def size(i: int) -> int:
        return len(problems[i].question) + sum(len(s) for s in problems[i].steps)

    return [i for k in range(0, len(order), chunk) for i in sorted(order[k: k + chunk], key=size)]


def nonfinite_loss(out: dict, step: int) -> str:
    """What stops a run whose loss is NaN or inf: the step and the terms that are."""
    bad = [k for k in ("ce", "kl", "decoder", "stop", "distill", "ce_teacher") if not torch.isfinite(out[k])]
    return f"non-finite loss at step {step} (term: {', '.join(bad) or 'loss'})"


def nonfinite_gradient(model: torch.nn.Module, loss: torch.Tensor, step: int) -> str:
    """What stops a run whose gradient norm is NaN or inf: the step, the loss and the first parameter hit."""
    return f"non-finite gradient at step {step} (loss {loss.item():.4g}; first in {first_nonfinite_grad(model)})"


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
        # gradient_accumulation_steps stays 1: the SFT loop accumulates itself (its windows restart each epoch
        # and resume with the run), and accelerator.backward would divide RL's losses by optim.grad_accum
        mixed_precision=cfg.train.mixed_precision,
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


def rng_states(accelerator: Accelerator | None = None) -> dict:
    """The random streams this process draws from: torch's CPU generator, Python's, and every CUDA device's (the
    latent noise on a GPU). With an accelerator of several processes, also each process's own under "processes" (a
    gather: call it on every process), since their draws differ and each must resume its own."""
    own = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state_all()
    if accelerator is not None and accelerator.num_processes > 1:
        return own | {"processes": gather_object([own])}
    return own


def restore_rng_states(rng: dict, accelerator: Accelerator) -> None:
    """Put back what `rng_states` saved: this process's own streams when the checkpoint holds them for as many
    processes, else the main process's (a checkpoint written before they were gathered)."""
    every = rng.get("processes")
    own = every[accelerator.process_index] if every and len(every) == accelerator.num_processes else rng
    torch.set_rng_state(own["torch"])
    random.setstate(own["python"])
    if "cuda" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(own["cuda"][: torch.cuda.device_count()])


def save_checkpoint(path: Path, accelerator: Accelerator, model, tokenizer, optimizer, progress: dict,
                    rng: dict | None = None) -> None:
    """A resumable checkpoint, with the fp16 loss scaler's state when there is one; with optimizer=None the weights
    only (train.save_checkpoints=false). `rng`: rng_states(accelerator), taken on every process (default: this
    process's streams only)."""
    scaler = getattr(accelerator, "scaler", None)
    save_training_checkpoint(path, accelerator.unwrap_model(model), tokenizer, optimizer, progress,
                             rng if rng is not None else rng_states(),
                             scaler.state_dict() if scaler is not None else None)


def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Forget every moment and step count (the reference re-creates AdamW each epoch). Done in place: a new
    optimizer passed to accelerator.prepare would be added to the accelerator's list, and every old AdamW state
    (~20 GB at 1B with a separate decoder) would stay alive."""
    optimizer.state.clear()


def train(cfg: RunConfig, resume: bool = False) -> Path:
    """Run SFT as configured; returns the run directory. Final weights are in RUN/final."""
    accelerator, train_set, val_set, run_path, ckpt = prepare_run(
        cfg, resume, find_unused_parameters=get_method(cfg.method.name).latent)
    is_main = accelerator.is_main_process
    bs, world, rank = cfg.optim.batch_size, accelerator.num_processes, accelerator.process_index
    total_steps = scheduled_steps(cfg, batches_per_epoch(cfg, len(train_set), world))
    # What the learning-rate schedule is laid over: a resumed run keeps it (a change would move the schedule).
    budget = {"train.epochs": cfg.train.epochs, "train.max_steps": cfg.train.max_steps, "scheduled_steps": total_steps}
    # map_location cpu: saved from the main process's GPU, it would land there on every process (prepare moves the
    # optimizer's state to each process's device)
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False) if ckpt is not None else None
    if state is not None:  # checked before anything is written: a refused resume leaves the run as it was
        check_resume_budget(ckpt, state["progress"], budget)
    if ckpt is not None:
        model, tok = LatentReasoner.from_pretrained(ckpt / "model", dtype=DTYPES[cfg.model.dtype], spec=spec_of(cfg))
    else:
        model, tok = build_reasoner(cfg, train_set)
    run = open_run_dir(run_path, cfg, resume, ckpt, accelerator) if is_main else None
    # skipped_steps: optimizer steps the fp16 loss scaler skipped (an overflow); the schedule does not advance on them
    progress = {"epoch": 0, "batch": 0, "step": 0, "skipped_steps": 0, "best_val": -1.0, "elapsed": 0.0}
    cur = curriculum_of(cfg)
    builder = SequenceBuilder(tok, cfg.method.name, cur, mask_surplus=model.spec.use_stop_head,
                              teacher=model.spec.use_teacher, teacher_drop_last_step=model.spec.teacher_drop_last_step,
                              eval_compression=model.spec.eval_compression)
    max_compression = model.spec.max_compression  # CoLaR (read before DDP wraps the model)
    optimizer = make_optimizer(model, cfg)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        progress.update(state["progress"])
        restore_rng_states(state["rng"], accelerator)
        if accelerator.scaler is not None and "scaler" in state:
            accelerator.scaler.load_state_dict(state["scaler"])
        state = None  # the optimizer holds its own copy
        if is_main:
            print(f"resumed from {ckpt} (epoch {progress['epoch']}, batch {progress['batch']}, step {progress['step']})")
    progress["budget"] = budget
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    guard = NonFiniteGuard(accelerator)

    accum = cfg.optim.grad_accum
    # iCoT: a record's chain length in tokens, encoded once per run (every epoch asks for its records')
    chain_length = functools.cache(lambda j: len(builder.chain_ids(train_set[j])))
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
        internalize = builder.method_def.chain == "internalize"
        if internalize:  # iCoT: each record's "stage" is how many chain tokens it drops (data/internalize.py)
            removal, n_b = removal_schedule(cfg), len(batches)
            stages = [removal.draw(epoch * n_b + i, n_b, len(b), rng) for i, b in enumerate(batches)]
            # whether each global batch (every process's records) still writes some chain: the optimizer resets
            # and best/ follow it, the same on every process
            chain_left = [any(k < chain_length(j) for j, k in zip(b, ks))
                          for b, ks in zip(batches, stages)]
        elif builder.method_def.chain == "compressed":  # CoLaR: one c per global batch, uniform in 1..max_compression
            stages = [[rng.randint(1, max_compression)] * len(b) for b in batches]
        else:
            stages = [[sample_stage(cur, epoch, rng, len(train_set[j].steps)) for j in b] for b in batches]
        # a seed per record of each global batch for what its sequence draws (CoLaR's group labels), the same
        # whichever process builds it
        draws = [[rng.getrandbits(32) for _ in b] for b in batches] if builder.method_def.chain == "compressed" \
            else [[0] * len(b) for b in batches]
        model.train()
        bar = progress_bar(total=len(batches), initial=progress["batch"], desc=f"{cfg.method.name} epoch {epoch} stage {stage}",
                   disable=not is_main, leave=False)
        summed, n_summed = None, 0  # the accumulation window's outputs so far
        for bi in range(progress["batch"], len(batches)):
            # Windows of `accum` batches from the epoch's start (the last may be shorter); a checkpoint or a stop
            # comes only at a window's end, so a resumed run starts on a window's first batch.
            first = bi - bi % accum
            size = min(accum, len(batches) - first)
            sync = bi == first + size - 1  # the window's last batch: all-reduce the gradients and step
            mine = batches[bi][rank * bs: (rank + 1) * bs]
            st = stages[bi][rank * bs: (rank + 1) * bs]
            if internalize:
                # upstream re-creates AdamW when the count grows, unless the previous batch had lost all its chain
                prev_left = chain_left[bi - 1] if bi > 0 else progress.get("chain_left", True)
                if cfg.curriculum.reset_on_removal and removal.grows_at(epoch * n_b + bi, n_b) and prev_left:
                    reset_optimizer(optimizer)
                progress["chain_left"] = chain_left[bi]
            seeds = draws[bi][rank * bs: (rank + 1) * bs]
            examples = [builder.build(train_set[j], s, random.Random(d)) for j, s, d in zip(mine, st, seeds)]
            batch = collate(examples, tok.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                out = model(batch)
                guard.check_loss(out["loss"], functools.partial(nonfinite_loss, out, progress["step"]))
                accelerator.backward(out["loss"] / size)  # the window's gradient: the mean of its batches'
            out = {k: v.detach() for k, v in out.items()}
            summed = out if summed is None else {k: summed[k] + v for k, v in out.items()}
            n_summed += 1
            progress["batch"] = bi + 1
            epoch_tokens += int(batch["prefix_mask"].sum() + batch["active"].sum() + batch["suffix_mask"].sum())
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss'].item():.3f}", lat=f"{out['active_latents'].item():.1f}")
            if not sync:
                continue
            mean = {k: v / n_summed for k, v in summed.items()}
            summed, n_summed = None, 0
            # max_grad_norm 0: no clipping (inf), the norm is still checked: stepping on a non-finite one would
            # write NaN into the weights, unless fp16 loss scaling skips the step
            norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm or float("inf"))
            updated = guard.step_ok(norm, functools.partial(nonfinite_gradient, model, mean["loss"], progress["step"]))
            lr = learning_rate(cfg, progress["step"] - progress["skipped_steps"], total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.step()  # also on a skipped step: the scaler skips the update and lowers its scale there
            optimizer.zero_grad()
            progress["skipped_steps"] += not updated
            progress["step"] += 1
            epoch_steps += 1
            progress["elapsed"] = time.time() - t0
            if progress["step"] % cfg.train.log_every == 0:
                # Averaged over processes, so a run's curve does not depend on how many there are.
                logged = {f"train/{k}": accelerator.reduce(v, "mean").item() for k, v in mean.items()}
                logged |= {"train/lr": lr, "train/stage": stage, "train/epoch": epoch}
                if internalize:  # what is left of the chain: the internalization's progress
                    logged["train/chain_tokens_left"] = sum(e.chain_left for e in examples) / len(examples)
                if updated:  # the norm is the same on every process (the gradients are all-reduced before it)
                    logged["train/grad_norm"] = norm.item()
                if guard.scaler is not None:
                    logged |= {"train/skipped_steps": progress["skipped_steps"],
                               "train/loss_scale": guard.scaler.get_scale()}
                if is_main:
                    run.log(logged, progress["step"])
            if cfg.train.checkpoint_every and progress["step"] % cfg.train.checkpoint_every == 0 \
                    and cfg.train.save_checkpoints:
                streams = rng_states(accelerator)  # every process's
                if is_main:
                    save_checkpoint(run.checkpoint_dir_for(progress["step"]), accelerator, model, tok, optimizer,
                                    progress, streams)
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
        new_best = False
        if is_main and val_set and cfg.train.eval_every_epoch and (epoch_done or out_of_time):
            acc = validate(accelerator.unwrap_model(model), builder, val_set, cfg, device)[0].accuracy
            run.log({"eval/val_accuracy": acc, "train/stage": stage}, progress["step"])
            if internalize and any(chain_left):  # as upstream: best/ among fully internalized epochs only
                progress["best_val"] = -1.0
            # The best checkpoint is chosen on the validation split, never on test (METHOD.md §7).
            if acc > progress["best_val"]:
                progress["best_val"], new_best = acc, True
        streams = rng_states(accelerator)  # every process's, after validation (on the main process) drew from its own
        if is_main:
            if new_best:
                save_checkpoint(run.path / "best", accelerator, model, tok, keep_state, progress, streams)
            if cfg.train.save_checkpoints:
                save_checkpoint(run.checkpoint_dir_for(progress["step"]), accelerator, model, tok, optimizer, progress,
                                streams)
            if epoch_done and epoch + 1 in cfg.train.keep_epochs:
                save_checkpoint(run.path / f"epoch-{epoch + 1}", accelerator, model, tok, keep_state, progress,
                                streams)
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
    # the model's method, not cfg's: RL (method.name atp-rl) validates the atp checkpoint it trains
    max_new = cfg.eval.cot_max_new_tokens if model.spec.method_def.long_answers else cfg.eval.max_new_tokens
    summary, rows = evaluate(model, builder, val_set, batch_size=cfg.eval.batch_size, max_new_tokens=max_new,
                             device=device, progress=False)
    return summary, [bool(r["correct"]) for r in rows]
