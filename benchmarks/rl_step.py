"""One GRPO step (rollout + advantages + minibatch updates) against the bare forward/backward passes it needs.

Run:  .venv/bin/python benchmarks/rl_step.py [--questions 16] [--group-size 8] [--minibatch 16] [--threads 1]
      .venv/bin/python benchmarks/rl_step.py --paper-shape --threads 1   (about 2.5 minutes on one core)
      [--correct-share 1.0] [--coherence-max-tokens 16] [--latent-policy gaussian|mean]
      [--device cpu|cuda] [--mixed-precision no|bf16] [--vocab N] [--repeats N]
GPU, the paper's RL shape at LLaMA-3.2-1B's shape and vocabulary, in the paper's precision (from the repo root;
on an H200, 2026-12-04: 206 s with imports, peak memory 70.9 GiB, coherence_decode_share=0.026;
results/gpu/2026-12-04-h200/rl_step_1b.log):
      PYTHONPATH=src python benchmarks/rl_step.py --paper-shape --preset llama-1b-shape --vocab 128256 \
          --device cuda --mixed-precision bf16

Setup: the tiny model (random weights; --preset), a word tokenizer built from the synthetic train questions,
method "atp" with c=2 and max_latent_stage=4 (8 latent slots), its separate step decoder, reasoner in eval
mode, decoder frozen, AdamW over the parameters that require grad, an `accelerate.Accelerator` as in `train_rl`
(forced to CPU unless --device cuda). --vocab N pads the model's vocabulary to N rows as gpu/smoke.py does (the
tokenizer has about 140 words; a random model samples every row, so the answer's and the plans' LM heads cost what
N rows cost, and rows past the tokenizer's decode to nothing). --device cuda: model, heads, decoder, optimizer,
inputs and the sampling generator on the GPU, cuDNN attention off (as `prepare_run` sets it: train.cudnn_attention
false), and every clock read waits for the GPU (`torch.cuda.synchronize()`), the wrapped engine pieces included.
--mixed-precision bf16: the paper's precision (train.mixed_precision bf16 over fp32 master weights): the
Accelerator's bf16 autocast wraps the model's forward (the update's scoring) and, as `train_rl` does, the rollout;
the bare passes run under the same autocast, one region per engine call (autocast caches its casts of the
trainable weights within a region, so the regions set what is cast how often). On CPU bf16 autocast is emulated
and slow. --paper-shape: the paper's RL shape (configs/paper/atp_rl.yaml, atp.yaml) on the llama-small
preset (or --preset): c=2, max_latent_stage=10 (20 latent slots, 10 groups per rollout), 16 answer tokens and
rl.coherence_max_tokens 16 (its default), 16 questions x 8 rollouts, minibatch 16. The stop head is forced
never to stop (last layer zeroed, bias (+20, -20)), so every trajectory fills all its slots; a random model
rarely samples eos, so answers run the full --max-new-tokens, and a random decoder's plans run to the
--coherence-max-tokens cap (all checked and printed). A random model answers nothing right, so the accuracy
reward is a fixed seeded pattern with --correct-share of the rollouts right (`script_accuracy`; default 1.0:
under the full reward only right answers' plans are decoded, so every plan is, the decode's worst case). The
update uses a fixed seeded random advantage vector rather than the rewards' advantages (timed all the same),
so every minibatch update does real work whatever the rewards. Model and optimizer state and both generators
are restored before every timed step, so each repeat runs the same trajectories. Printed first: the device and the
timing setup (one untimed warm-up step and one for the checks, then --repeats interleaved timed repeats; default 3,
2 with --paper-shape or --device cuda); after the checks a line per repeat (engine step, its decode and share, bare
totals: a run cut short still reports the share); last before the ratios: the script's wall time (and on CUDA its
peak memory).

Figures (ms per RL step; the engine pieces are timed inside the real calls by wrapping the reasoner's
methods and `rl.decode_plans`, so they add up to the step):
  engine   `rollout` (fill_latents + generate + decode_plans, the coherence reward's plan decode + rewards),
           `group_advantages`, `grpo_update`
           (old log-probs per minibatch under no_grad, then per minibatch: score with grad, surrogate
           losses, backward, grad clipping, optimizer step).
  bare     the same backbone passes with inputs prepared beforehand from the engine's own trajectories
           (embeddings, masks, positions, latents, tokens); see `prepare_rollout`, `prepare_decode`,
           `prepare_scoring` for what each includes. Per minibatch: the teacher-forced forward under
           no_grad (old log-probs), then the same forward with grad, a loss on the answer log-probs
           weighted by the advantages, backward, AdamW step (over the LM's parameters). Left out: sampling
           (randn, multinomial), stop decisions, mask/position building, stacking, rewards and text
           decoding, the surrogate's clipping arithmetic, grad-norm clipping. The latent and stop heads are
           not backbone passes and are left out too (as in benchmarks/latent_engine.py), so the last line
           counts them as engine cost.
  bare+heads  the same, plus the heads where the engine runs them (latent head per slot, stop head per
           group start; in scoring their Gaussian/stop log-probs join the loss, the AdamW step covers the
           heads). This matters mostly for the backward: without the heads the loss does not depend on the
           last layer's outputs at the prefix and latent columns, so autograd prunes that part of the graph
           and the passes-only backward is much cheaper than the engine's. The passes-only ratio (the last
           line) is therefore an upper bound on the overhead; `overhead counting the heads` is the tighter one.
Checks printed next: every slot active, answer length, the rollouts counted right and the groups decoded
(of all active groups, their tokens, how many wrote eos), and that the bare passes reproduce the engine's
answer log-probs (rollout) and the answer and latent log-probs of `score` up to rounding: an answer log-prob
within 1e-3 and a row's latent term within 1e-5 of itself in fp32; under bf16 the same passes batched or ordered
differently round differently, so within 0.1 and 1e-3 (`LOGPROB_TOLERANCE`; printed against the tolerance of the
precision that ran, not asserted).

The last two lines are `coherence_decode_share=<x>` (engine decode_plans time / engine step time; the paper
names the coherence reward's cost as a limitation, target <= 0.10 at the paper's shape) and
`overhead_vs_bare_passes=<x>` (engine step time / bare time), the latter last; with --paper-shape the share is
last. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import sys
import time
import warnings
from collections import defaultdict

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed

import atp_latent.training.rl as rl_mod
from atp_latent.config import load_config
from atp_latent.data.sequences import builder_for
from atp_latent.data.synthetic import SynthConfig, generate_benchmark
from atp_latent.modeling.engine import backbone_forward, new_cache
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import gaussian_log_density
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import group_advantages, grpo_update, rollout

OVERHEAD_TARGET = 1.5
COHERENCE_SHARE_TARGET = 0.10  # the coherence decode's share of an RL step at the paper's shape
TINY_SHAPE = dict(questions=16, group_size=8, minibatch=16, max_new_tokens=16, preset="llama-tiny",
                  latents_per_step=2, max_latent_stage=4, repeats=3, correct_share=1.0)
PAPER_SHAPE = TINY_SHAPE | dict(preset="llama-small", max_latent_stage=10, repeats=2)
CUDA_REPEATS = 2  # an H200 at the 1B shape: about 20 s per repeat (engine + bare + bare+heads: about 55 s), steady
# Deviations of the bare passes' log-probs from the engine's that the checks call rounding: an answer token's
# log-prob, absolute; a row's latent term (Gaussian log-densities summed over d dimensions and every slot: hundreds
# to thousands), relative. fp32: float noise. bf16 autocast rounds every matmul's output to 8 mantissa bits, so
# the same passes batched or ordered differently round differently.
# Measured on CPU, bf16: 2e-3 and 5e-5 (llama-tiny), 6e-3 and 5e-5 (llama-medium, 32k rows).
LOGPROB_TOLERANCE = {"no": (1e-3, 1e-5), "bf16": (0.1, 1e-3)}  # (answer, latent relative)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=None, help="B, questions per RL step (16)")
    p.add_argument("--group-size", type=int, default=None, help="G, rollouts per question (8)")
    p.add_argument("--minibatch", type=int, default=None, help="GRPO minibatch size (16)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer tokens and rl.coherence_max_tokens, the plan decode's tokens per group (16)")
    p.add_argument("--preset", default=None, help="model preset (llama-tiny; --paper-shape: llama-small)")
    p.add_argument("--latents-per-step", type=int, default=None, help="c (2)")
    p.add_argument("--max-latent-stage", type=int, default=None,
                   help="latent slots = c x this (4; --paper-shape: 10)")
    p.add_argument("--coherence-max-tokens", type=int, default=None,
                   help="rl.coherence_max_tokens (default --max-new-tokens). A random decoder rarely writes eos, so "
                        "its plans run to this cap: a lower cap stands for a trained decoder whose steps end at "
                        "eos after that many tokens (a group stops costing once it has written eos)")
    p.add_argument("--correct-share", type=float, default=None,
                   help="share of the rollouts counted right (1.0): a random model answers none right, so the "
                        "accuracy reward is replaced by a fixed seeded pattern; under the full reward only the "
                        "plans of right answers are decoded, so 1.0 is the decode's worst case")
    p.add_argument("--paper-shape", action="store_true",
                   help="the paper's RL shape (configs/paper/atp_rl.yaml) on llama-small (or --preset, e.g. "
                        "llama-1b-shape): c=2, max_latent_stage=10 (20 slots), 16 answer and plan tokens, 16 "
                        "questions x 8 rollouts, minibatch 16, 2 repeats (options given explicitly still win); the "
                        "last line is then the coherence decode's share of the RL step")
    p.add_argument("--vocab", type=int, default=None,
                   help="pad the model's vocabulary to this many rows, as gpu/smoke.py does (default: the word "
                        "tokenizer's ~140; LLaMA-3's is 128256): the LM heads of the answer and of the plan decode "
                        "then cost what that vocabulary costs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where model, optimizer and inputs live (cpu); cuda: every clock read waits for the GPU")
    p.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                   help="train.mixed_precision (no): bf16 is the paper's (fp32 master weights, bf16 autocast over "
                        "the engine step and the bare passes alike, as train_rl runs it)")
    p.add_argument("--latent-policy", choices=("gaussian", "mean"), default="gaussian",
                   help="rl.latent_policy (gaussian): with mean, the G rollouts of a question share their latents, "
                        "so its plans are decoded once")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats of engine step and bare passes (interleaved); the fastest of each is kept "
                        f"(3; --paper-shape or --device cuda: {CUDA_REPEATS})")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.repeats is None and args.device == "cuda":
        args.repeats = CUDA_REPEATS
    for k, v in (PAPER_SHAPE if args.paper_shape else TINY_SHAPE).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.coherence_max_tokens is None:
        args.coherence_max_tokens = args.max_new_tokens
    return args


# ----------------------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------------------
def build(args, device: torch.device):
    bench = generate_benchmark(SynthConfig(seed=0, n_train=200, n_val=10, n_test=10, n_ood=10))
    tok = build_word_tokenizer([p.question for p in bench["train"]])
    set_seed(args.seed)  # python, numpy and torch
    if args.vocab and args.vocab < len(tok):
        sys.exit(f"rl_step.py: --vocab {args.vocab} is smaller than the tokenizer ({len(tok)} tokens)")
    lm = build_tiny_model(args.preset, tok, seed=args.seed, vocab=args.vocab, device=device)
    spec = ReasonerSpec.for_method("atp", latents_per_step=args.latents_per_step, max_latent_stage=args.max_latent_stage)
    reasoner = LatentReasoner(lm, spec).eval()
    with torch.no_grad():  # never stop: logits (continue=+20, stop=-20) whatever z is
        last = reasoner.stop_head.mlp[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([20.0, -20.0]))
    if reasoner.decoder is not None:
        reasoner.decoder.requires_grad_(False)  # frozen, as in train_rl
    builder = builder_for(tok, spec)
    problems = [bench["train"][i % len(bench["train"])] for i in range(args.questions)]
    cfg = load_config(None, [f"rl.questions_per_step={args.questions}", f"rl.group_size={args.group_size}",
                             f"rl.minibatch_size={args.minibatch}", f"rl.max_new_tokens={args.max_new_tokens}",
                             f"rl.coherence_max_tokens={args.coherence_max_tokens}", f"train.seed={args.seed}",
                             f"rl.latent_policy={args.latent_policy}"])
    return tok, reasoner, builder, problems, cfg


def script_accuracy(n: int, share: float, seed: int) -> torch.Tensor:
    """Replace `rl.accuracy_reward` (a random model answers nothing right) by a fixed pattern: round(share * n)
    seeded rollouts of the n are right, the same ones at every step. `rollout` calls it once per rollout, in
    order, so the i-th call of each step answers for rollout i. Returns the pattern ([n] bool)."""
    right = torch.zeros(n, dtype=torch.bool)
    right[torch.randperm(n, generator=torch.Generator().manual_seed(seed + 3))[: round(share * n)]] = True
    calls = itertools.count()

    def accuracy(pred, gold) -> float:
        return float(right[next(calls) % n])

    rl_mod.accuracy_reward = accuracy
    return right


def now() -> float:
    """time.perf_counter once the GPU has finished the work queued so far (when CUDA is in use): CUDA calls
    return before their kernels run, so without it a region's time would be its launches', not its work's."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class Clock:
    """Wall time per named piece of the engine step, filled by wrappers around the calls the step makes."""

    def __init__(self):
        self.t: dict[str, float] = defaultdict(float)
        self.phase = ""

    def wrap(self, fn, name):
        def inner(*a, **kw):
            key = f"{self.phase}.{name}:{'grad' if torch.is_grad_enabled() else 'nograd'}"
            t0 = now()
            out = fn(*a, **kw)
            self.t[key] += now() - t0
            return out
        return inner


def instrument(raw: LatentReasoner, clock: Clock) -> None:
    """Time the reasoner's pieces where the step calls them (instance attributes shadow the methods;
    `rollout` looks `decode_plans` up in its module). Overhead: one perf_counter pair per call (and on CUDA two
    synchronizations, which drain the GPU's queue: about 50 calls per step)."""
    for name in ("answer", "fill", "decode_groups", "score", "lm_logits"):
        setattr(raw, name, clock.wrap(getattr(raw, name), name))
    rl_mod.decode_plans = clock.wrap(rl_mod.decode_plans, "decode_plans")


def engine_step(model, raw, optimizer, accelerator, builder, problems, cfg, seed, adv_fixed, clock):
    """One full RL step as train_rl runs it; returns (pieces in seconds, trajectories)."""
    clock.t.clear()
    device = accelerator.device
    gen = torch.Generator(device=device).manual_seed(seed * 1000)  # the sampling's, on the device as in train_rl
    perm_rng = torch.Generator().manual_seed(seed + 7)
    clock.phase = "rollout"
    t0 = now()
    with accelerator.autocast():  # train_rl samples in the precision the update scores in
        traj = rollout(raw, builder, problems, cfg, gen, device)
    t1 = now()
    adv = group_advantages(traj.rewards, cfg.rl.group_size).to(device)
    t2 = now()
    del adv  # random model: equal rewards, zero advantages; use the fixed random vector instead
    clock.phase = "update"
    stats = grpo_update(model, optimizer, accelerator, traj, adv_fixed, cfg, perm_rng)
    t3 = now()
    pieces = {"rollout": t1 - t0, "advantages": t2 - t1, "grpo_update": t3 - t2, "total": t3 - t0} | dict(clock.t)
    return pieces, traj, stats


# ----------------------------------------------------------------------------------------------------------
# bare passes
# ----------------------------------------------------------------------------------------------------------
def prepare_rollout(lm, batch, gen_tokens, end_id):
    """Inputs of every backbone pass of the rollout's answer(): prefix (embedding looked up beforehand), one
    single-column pass per latent slot with the engine's sampled z, one per answer token (its embedding
    looked up beforehand; the lm_head runs on its column). Masks and positions are built beforehand."""
    ids, mask, z, active = batch["prefix_ids"], batch["prefix_mask"], batch["rl_z"], batch["rl_active"]
    n, P = ids.shape
    dev = ids.device
    table = lm.get_input_embeddings()
    L, T = z.shape[1], gen_tokens.shape[1]
    with torch.no_grad():
        prefix_emb = table(ids)
        answer_in = torch.cat([torch.full((n, 1), end_id, dtype=torch.long, device=dev), gen_tokens[:, :-1]], dim=1)
        answer_emb = table(answer_in)
    full_mask = torch.cat([mask.long(), active.long(), torch.ones(n, T, dtype=torch.long, device=dev)], dim=1)
    prefix_pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    n_prefix = mask.long().sum(-1)
    lat_pos = n_prefix[:, None] + active.long().cumsum(-1) - active.long()
    after = n_prefix + active.long().sum(-1)
    steps = []  # (embeds [n,1,d], mask, positions [n,1], with lm_head)
    for t in range(L):
        if active[:, t].any():  # the engine skips a slot no row uses
            steps.append((z[:, t : t + 1].contiguous(), full_mask[:, : P + t + 1].contiguous(),
                          lat_pos[:, t : t + 1].contiguous(), False))
    for t in range(T):
        steps.append((answer_emb[:, t : t + 1].contiguous(), full_mask[:, : P + L + t + 1].contiguous(),
                      (after + t)[:, None].contiguous(), True))
    return prefix_emb, mask.long(), prefix_pos, steps


@torch.no_grad()
def run_cached_passes(lm, prepared, prefix_head: bool = False, collect: bool = False):
    """Prefix pass with a fresh cache (+ lm_head on its last column when `prefix_head`: the decoder's first
    token), then the single-column passes (+ lm_head where flagged). `collect`: return the head outputs."""
    prefix_emb, prefix_mask, prefix_pos, steps = prepared
    head = lm.get_output_embeddings()
    cache = new_cache(lm)
    outs = []
    hidden = backbone_forward(lm, prefix_emb, prefix_mask, prefix_pos, cache)
    if prefix_head:
        outs.append(head(hidden[:, -1]))
    for emb, mask, pos, with_head in steps:
        hidden = backbone_forward(lm, emb, mask, pos, cache)
        if with_head:
            outs.append(head(hidden[:, -1]))
    return outs if collect else None


def prepare_decode(raw: LatentReasoner, z, rows, groups, n_tokens, decoded):
    """Coherence decoding: the decoder's prefix pass over the c latent inputs of each of the N decoded groups
    (the active groups of the rollouts whose coherence counts, as `decode_plans` picks them) (+ lm_head on its
    last column: the first token), then one single-column pass per further decoded token (+ lm_head),
    `n_tokens` tokens in all (as many as the real decode produced; every group runs them all, while the engine
    drops a group once it has written eos: the checks line counts those). None when no group is decoded."""
    if rows.numel() == 0:
        return raw.step_decoder, None
    dec = raw.step_decoder
    c = raw.spec.latents_per_step
    zg = raw.decoder_inputs(z, rows, groups)
    N = zg.shape[0]
    table = dec.get_input_embeddings()
    with torch.no_grad():
        tok_emb = table(decoded)
    mask = torch.ones(N, c + n_tokens, dtype=torch.long, device=zg.device)
    steps = [(tok_emb[:, t : t + 1].contiguous(), mask[:, : c + t + 1].contiguous(),
              torch.full((N, 1), c + t, dtype=torch.long, device=zg.device), True) for t in range(n_tokens - 1)]
    pos = torch.arange(c, device=zg.device)[None].expand(N, -1).contiguous()
    return dec, (zg.to(table.weight.dtype).contiguous(), mask[:, :c].contiguous(), pos, steps)


def prepare_scoring(lm, batch, chunks):
    """Per minibatch (the engine's own shuffled chunks), the teacher-forced forward of `score`: prefix pass,
    one single-column pass per latent slot (the rollout's z, fixed inputs), one pass over the suffix
    [<end-latent>, answer tokens[:-1]] with the lm_head on every suffix column. Masks and positions are
    built beforehand; embeddings are looked up inside the pass (the grad pass trains the table)."""
    out = []
    end_id = int(batch["end_id"])
    for idx in chunks:
        ids, mask = batch["prefix_ids"][idx], batch["prefix_mask"][idx].long()
        z, active = batch["rl_z"][idx], batch["rl_active"][idx]
        tokens, tmask = batch["rl_tokens"][idx], batch["rl_token_mask"][idx].long()
        n, P = ids.shape
        prefix_pos = (mask.cumsum(-1) - 1).clamp(min=0)
        n_prefix = mask.sum(-1)
        lat_mask = torch.cat([mask, active.long()], dim=1)
        lat_pos = n_prefix[:, None] + active.long().cumsum(-1) - active.long()
        lat = [(z[:, t : t + 1].contiguous(), lat_mask[:, : P + t + 1].contiguous(), lat_pos[:, t : t + 1].contiguous())
               for t in range(z.shape[1]) if active[:, t].any()]
        suffix_in = torch.cat([torch.full((n, 1), end_id, dtype=torch.long, device=ids.device), tokens[:, :-1]],
                              dim=1)
        suffix_mask = torch.cat([lat_mask, tmask], dim=1)
        suffix_pos = (n_prefix + active.long().sum(-1))[:, None] + (tmask.cumsum(-1) - 1).clamp(min=0)
        out.append(dict(ids=ids, mask=mask, pos=prefix_pos, lat=lat, suffix_in=suffix_in, suffix_mask=suffix_mask,
                        suffix_pos=suffix_pos, tokens=tokens, tmask=tmask, idx=idx))
    return out


def score_forward(lm, mb, heads=None):
    """The bare teacher-forced forward of one minibatch; returns (answer log-probs [n, T], latent term [n]).
    With `heads` (latent_head, stop_head, c) the heads run where `score` runs them (the "+heads" variant)."""
    table, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    cache = new_cache(lm)
    hidden = backbone_forward(lm, table(mb["ids"]), mb["mask"], mb["pos"], cache)
    h = hidden[:, -1]
    lat_terms = []
    for t, (z, mask, pos) in enumerate(mb["lat"]):
        if heads is not None:
            latent_head, stop_head, c = heads
            mu, logvar = latent_head(h)
            lat_terms.append(gaussian_log_density(z[:, 0], mu, logvar))
            if t % c == 0:
                lat_terms.append(torch.log_softmax(stop_head(z[:, 0]), -1)[:, 0])
        h = backbone_forward(lm, z, mask, pos, cache)[:, -1]
    hidden = backbone_forward(lm, table(mb["suffix_in"]), mb["suffix_mask"], mb["suffix_pos"], cache)
    logp = torch.log_softmax(head(hidden).float(), -1).gather(-1, mb["tokens"][..., None]).squeeze(-1)
    lat = torch.stack(lat_terms, 1).sum(1) if lat_terms else logp.new_zeros(logp.shape[0])
    return logp * mb["tmask"], lat


def run_bare(lm, prepared, optimizer, adv, autocast, heads=None):
    """Bare passes of one RL step; returns seconds per piece (same order of work as the engine step).
    `autocast` (the accelerator's) is entered where the engine step enters it: once around the rollout (its
    answer passes and the plan decode), once per minibatch forward of the update (the prepared model's forward
    enters it per call); the loss and backward run outside it."""
    rollout_prep, (dec, decode_prep), scoring = prepared
    out = {}
    t0 = now()
    with autocast():
        run_cached_passes(lm, rollout_prep)
        if heads is not None:  # the heads as the rollout runs them: latent head per slot, stop head per group start
            latent_head, stop_head, c = heads
            with torch.no_grad():
                h = rollout_prep[0][:, -1]
                n_latent = sum(1 for s in rollout_prep[3] if not s[3])
                for t in range(n_latent):
                    latent_head(h)
                    if t % c == 0:
                        stop_head(h)
        t1 = now()
        if decode_prep is not None:
            run_cached_passes(dec, decode_prep, prefix_head=True)
        t2 = now()
    with torch.no_grad():
        for mb in scoring:
            with autocast():
                score_forward(lm, mb, heads)
    t3 = now()
    fwd = bwd = 0.0
    for mb in scoring:
        a = now()
        with autocast():
            logp, lat = score_forward(lm, mb, heads)
        ad = adv[mb["idx"]]
        loss = -((logp.sum(-1) / mb["tmask"].sum(-1).clamp(min=1)) * ad).mean() - (lat * ad).mean()
        b = now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        fwd += b - a
        bwd += now() - b
    out.update(rollout=t1 - t0, decode=t2 - t1, score_old=t3 - t2, score_new=fwd, backward_step=bwd)
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    t_start = time.perf_counter()
    if hasattr(sys.stdout, "reconfigure"):  # every line out at once: a run killed at its time limit keeps them
        sys.stdout.reconfigure(line_buffering=True)
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("rl_step.py: --device cuda, but torch sees no CUDA device (torch.cuda.is_available() is False)")
    # rl.py's first-ratio check calls float() on a grad tensor; harmless here, and it would fire every step
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cuda.enable_cudnn_sdp(False)  # as prepare_run sets it (train.cudnn_attention: false)
        name = torch.cuda.get_device_name(device)
    else:
        device, name = torch.device("cpu"), platform.processor() or platform.machine()
    print(f"device={device} ({name}) torch={torch.__version__} transformers={transformers.__version__} "
          f"mixed_precision={args.mixed_precision}")
    print(f"timing: wall clock (time.perf_counter{', after torch.cuda.synchronize()' if device.type == 'cuda' else ''}"
          f" at every read, the engine's wrapped pieces included); 1 untimed warm-up step and 1 for the checks, "
          f"then --repeats {args.repeats}: timed repeats of engine step / bare / bare+heads, interleaved, the fastest of each "
          f"kept")
    set_seed(args.seed)  # python, numpy and torch
    tok, reasoner, builder, problems, cfg = build(args, device)
    right = script_accuracy(args.questions * args.group_size, args.correct_share, args.seed)
    # as prepare_run builds it: CPU unless on CUDA, the run's mixed precision (its autocast wraps the model's
    # forward once prepared, and engine_step enters it around the rollout, as train_rl does)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=args.mixed_precision)
    assert accelerator.device.type == device.type, (accelerator.device, device)
    params = [p for p in reasoner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay)
    model, optimizer = accelerator.prepare(reasoner, optimizer)
    raw = accelerator.unwrap_model(model)
    raw.eval()
    lm = raw.lm
    n = args.questions * args.group_size
    adv_fixed = torch.randn(n, generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    t_built = time.perf_counter()
    T = args.max_new_tokens
    clock = Clock()
    instrument(raw, clock)

    # ---- warm-up step (untimed): also populates the optimizer state; then snapshot model + optimizer ----
    engine_step(model, raw, optimizer, accelerator, builder, problems, cfg, args.seed, adv_fixed, clock)
    snap_model = copy.deepcopy(raw.state_dict())
    snap_opt = copy.deepcopy(optimizer.state_dict())

    def restore():
        raw.load_state_dict(snap_model)
        # a copy: load_state_dict keeps the tensors it is given (same device and dtype), and AdamW's in-place
        # updates would then advance the snapshot itself
        optimizer.load_state_dict(copy.deepcopy(snap_opt))

    restore()
    _, traj, stats = engine_step(model, raw, optimizer, accelerator, builder, problems, cfg, args.seed,
                                 adv_fixed, clock)
    batch = traj.batch
    L = batch["rl_z"].shape[1]

    # ---- bare inputs from the engine's own trajectories ----
    gen_tokens = batch["rl_tokens"]
    rollout_prep = prepare_rollout(lm, batch, gen_tokens, builder.end_id)
    c = raw.spec.latents_per_step
    w = rl_mod.reward_weights(cfg)
    needed = torch.tensor([rl_mod.coherence_matters(a, w, cfg.rl.reward == "coherence_only")
                           for a in traj.terms["acc"].tolist()], dtype=torch.bool, device=device)
    rows, groups = (batch["rl_active"][:, ::c] & needed[:, None]).nonzero(as_tuple=True)
    with torch.no_grad(), accelerator.autocast():  # the tokens the engine's decode wrote, in its precision
        decoded = raw.decode_groups(raw.decoder_inputs(batch["rl_z"], rows, groups), tok.eos_token_id,
                                    tok.pad_token_id, cfg.rl.coherence_max_tokens) if rows.numel() else \
            torch.zeros(0, 0, dtype=torch.long)
    n_dec = decoded.shape[1]
    distinct = torch.unique(raw.decoder_inputs(batch["rl_z"], rows, groups).flatten(1), dim=0).shape[0] \
        if rows.numel() else 0
    ended = int((decoded == tok.eos_token_id).any(-1).sum())
    decode_prep = prepare_decode(raw, batch["rl_z"], rows, groups, n_dec, decoded)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 7)).to(device)
    chunks = [perm[i : i + args.minibatch] for i in range(0, n, args.minibatch)]
    scoring = prepare_scoring(lm, batch, chunks)
    prepared = (rollout_prep, decode_prep, scoring)
    heads = (raw.latent_head, raw.stop_head, raw.spec.latents_per_step)
    bare_params = [p for p in lm.parameters() if p.requires_grad]
    bare_opt = torch.optim.AdamW(bare_params, lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay)
    bare_opt_h = torch.optim.AdamW(params, lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay)
    # checks that the bare passes compute the engine's numbers: the rollout's answer log-probs (weights
    # restored to the rollout's), then `score` on the first minibatch against the bare scoring forward
    restore()
    autocast = accelerator.autocast
    with torch.no_grad():  # each side under the autocast its engine call runs in (one region per call)
        with autocast():
            outs = run_cached_passes(lm, rollout_prep, collect=True)
        lp = torch.log_softmax(torch.stack(outs, 1).float(), -1)
        lp = lp.gather(-1, gen_tokens[..., None]).squeeze(-1) * batch["rl_token_mask"]
        dev_roll = float((lp - traj.rollout_logps["answer"]).abs().max())
        with autocast():
            ref = raw.score({k: (v if v.dim() == 0 else v[chunks[0]]) for k, v in batch.items()})
        with autocast():
            logp, lat = score_forward(lm, scoring[0], heads)
        dev_score = float((logp - ref["answer"]).abs().max())
        dev_latent = float(((lat - ref["latent"].sum(-1)).abs() / ref["latent"].sum(-1).abs().clamp(min=1)).max()) \
            if args.latent_policy == "gaussian" else 0.0  # under mean the policy scores no latent density
    run_bare(lm, prepared, bare_opt, adv_fixed, autocast)  # warm-up (and optimizer state)
    run_bare(lm, prepared, bare_opt_h, adv_fixed, autocast, heads)
    t_warm = time.perf_counter()

    no_eos = int(((gen_tokens != tok.eos_token_id) & batch["rl_token_mask"]).sum(-1).eq(T).sum())
    all_active = bool(batch["rl_active"].all()) and L == builder.cur.eval_slots
    n_groups, all_groups = int(rows.numel()), int(batch["rl_active"][:, ::c].sum())
    vocab = lm.get_input_embeddings().weight.shape[0]
    print(f"preset={args.preset} vocab={vocab} (tokenizer {len(tok)}) threads={torch.get_num_threads()} "
          f"B={args.questions} "
          f"G={args.group_size} rows={n} minibatch={args.minibatch} ({len(chunks)} minibatches) latent_slots={L} "
          f"max_new_tokens={T} repeats={args.repeats}")
    print(f"checks: all {L} slots active in every row: {all_active}; answer gen passes: {gen_tokens.shape[1]} "
          f"(rows without eos: {no_eos}/{n}); first-update ratio deviation "
          f"{stats.get('first_ratio_dev', float('nan')):.1e}")
    print(f"checks: rollouts counted right {int(right.sum())}/{n} (as scripted: "
          f"{torch.equal(traj.terms['acc'].bool(), right)}; reward {cfg.rl.reward}); coherence decode: "
          f"{n_groups} of {all_groups} active groups ({distinct} distinct, each decoded once) x {n_dec} tokens "
          f"(cap {cfg.rl.coherence_max_tokens}), "
          f"{ended} of them wrote eos (the engine stops their cost there)")
    tol_answer, tol_latent = LOGPROB_TOLERANCE[args.mixed_precision]
    within = max(dev_roll, dev_score) <= tol_answer and dev_latent <= tol_latent
    latent = f", latent terms (+heads) relative {dev_latent:.1e}" if args.latent_policy == "gaussian" else ""
    print(f"checks: max |bare - engine| answer log-prob in the rollout {dev_roll:.1e}, in scoring {dev_score:.1e}"
          f"{latent}; {'bf16 autocast' if args.mixed_precision == 'bf16' else 'fp32'} rounding tolerance "
          f"{tol_answer:g} (latent relative {tol_latent:g}): "
          f"{'within' if within else 'ABOVE it (the bare passes may not compute what the engine does)'}")

    # ---- timed: engine step and bare passes interleaved; the fastest repeat of each kept ----
    best_e, best_b, best_bh = None, None, None
    print()
    for i in range(args.repeats):
        restore()
        e, _, _ = engine_step(model, raw, optimizer, accelerator, builder, problems, cfg, args.seed, adv_fixed,
                              clock)
        if best_e is None or e["total"] < best_e["total"]:
            best_e = e
        b = run_bare(lm, prepared, bare_opt, adv_fixed, autocast)
        if best_b is None or b["total"] < best_b["total"]:
            best_b = b
        bh = run_bare(lm, prepared, bare_opt_h, adv_fixed, autocast, heads)
        if best_bh is None or bh["total"] < best_bh["total"]:
            best_bh = bh
        # one line per repeat, so a run cut short still reports its decode share
        decode = e.get("rollout.decode_plans:nograd", 0.0)
        print(f"repeat {i + 1}/{args.repeats} (s): engine step {e['total']:.3f} (decode_plans {decode:.3f}, share "
              f"{decode / e['total']:.3f}), bare {b['total']:.3f}, bare+heads {bh['total']:.3f}")
    restore()

    e, b, bh = best_e, best_b, best_bh

    def g(key):
        return e.get(key, 0.0)

    answer, plans = g("rollout.answer:nograd"), g("rollout.decode_plans:nograd")
    old, new = g("update.score:nograd"), g("update.score:grad")
    rows_out = [
        ("rollout: answer() = fill + generate", answer, b["rollout"], bh["rollout"]),
        ("rollout: decode_plans (coherence)", plans, b["decode"], bh["decode"]),
        ("rollout: rewards, text, batch", e["rollout"] - answer - plans, 0.0, 0.0),
        ("group_advantages", e["advantages"], 0.0, 0.0),
        ("grpo: old log-probs (no_grad score)", old, b["score_old"], bh["score_old"]),
        ("grpo: score forward with grad", new, b["score_new"], bh["score_new"]),
        ("grpo: loss+backward+clip+step", e["grpo_update"] - old - new, b["backward_step"], bh["backward_step"]),
    ]
    print()
    print(f"{'piece (ms per RL step)':<38}{'engine':>10}{'bare':>10}{'ratio':>8}{'bare+heads':>12}")
    for name, te, tb, tbh in rows_out:
        ratio = f"{te / tb:.2f}" if tb > 0 else "-"
        print(f"{name:<38}{1e3 * te:>10.1f}{1e3 * tb:>10.1f}{ratio:>8}{1e3 * tbh:>12.1f}")
    print(f"{'total':<38}{1e3 * e['total']:>10.1f}{1e3 * b['total']:>10.1f}{e['total'] / b['total']:>8.2f}"
          f"{1e3 * bh['total']:>12.1f}")
    print()
    fill_r = g("rollout.fill:nograd")
    print("engine sub-pieces (ms): "
          f"rollout fill {1e3 * fill_r:.1f} + generate {1e3 * (answer - fill_r):.1f}; "
          f"decode_groups {1e3 * g('rollout.decode_groups:nograd'):.1f} of decode_plans {1e3 * plans:.1f}")
    print("  scoring (fill / teacher-forced suffix / heads+log-probs): "
          f"no_grad {1e3 * g('update.fill:nograd'):.1f} / {1e3 * g('update.lm_logits:nograd'):.1f} / "
          f"{1e3 * (old - g('update.fill:nograd') - g('update.lm_logits:nograd')):.1f}; "
          f"grad {1e3 * g('update.fill:grad'):.1f} / {1e3 * g('update.lm_logits:grad'):.1f} / "
          f"{1e3 * (new - g('update.fill:grad') - g('update.lm_logits:grad')):.1f}")
    overhead = e["total"] / b["total"]
    print(f"overhead counting the heads as model compute: {e['total'] / bh['total']:.3f}")
    print(f"target overhead <= {OVERHEAD_TARGET:g}: {'met' if overhead <= OVERHEAD_TARGET else 'NOT met'}")
    share = plans / e["total"]
    lines = [f"overhead_vs_bare_passes={overhead:.3f}", f"coherence_decode_share={share:.3f}"]
    verdict = f"{'met' if share <= COHERENCE_SHARE_TARGET else 'NOT met'}" if args.paper_shape else "see --paper-shape"
    print(f"coherence decode (decode_plans) share of the RL step: {100 * share:.1f}% ({n_groups} groups); target at "
          f"the paper's shape <= {100 * COHERENCE_SHARE_TARGET:g}%: {verdict}")
    t_end = time.perf_counter()
    peak = f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    print(f"wall time (s, imports excluded): {t_end - t_start:.1f} = build {t_built - t_start:.1f} + warm-up and "
          f"checks {t_warm - t_built:.1f} + {args.repeats} repeats {t_end - t_warm:.1f}{peak}")
    for line in (lines if args.paper_shape else lines[::-1]):
        print(line)


if __name__ == "__main__":
    main()
