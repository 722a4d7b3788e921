"""Latent-engine throughput against the batch-1 full-recompute reference and against bare forward passes.

Run:  .venv/bin/python benchmarks/latent_engine.py [--n 256] [--n-baseline 32] [--batch-size 64]

Setup: the default tiny model (random weights), a word tokenizer built from the synthetic train questions,
method "atp" with c=2 and max_latent_stage=4 (8 latent slots). The stop head is forced never to stop and
the random model never emits eos, so every row fills all 8 slots and decodes exactly --max-new-tokens
tokens in every path (checked and printed).

Figures:
  engine     `LatentReasoner.answer` on left-padded batches (prefix pass + 1 pass per latent slot + 1 pass
             per answer token, KV-cached).
  baseline   `reference_row` one problem at a time, the whole sequence recomputed at every latent and
             answer token (as the published implementations evaluate), on a subset.
  bare       the same passes as the engine, with inputs (embeddings, masks, positions) prepared beforehand:
             one backbone pass over the prefix with a fresh cache, one single-column backbone pass per
             latent slot, one per answer token plus the lm_head on its column. The latent and stop heads
             are model compute but not backbone passes; they are left out of "bare" (their time is printed
             separately), so `overhead` counts them as engine cost.

  codi       CODI against Coconut on the same LM weights, batch and 6 latents (c = 2, max_latent_stage 3, every
             step latent): a training step (forward + backward, the teacher task included) on --batch-size
             training problems, and greedy generation (eos never ends a row) on the engine batches
             (`codi_train_step_vs_coconut`, target <= 2.2; `codi_generate_vs_coconut`, target <= 1.2). --no-codi
             skips it.
  colar      CoLaR's greedy generation against Coconut's on the same LM weights, batch and 6 latents (CoLaR: the
             latent head's mean x emb_std fed back, and the LM head asked for <|end-latent|> before every latent
             after the first; its <|end-latent|> row is zeroed so that the random model never emits it and every
             row fills all 6, checked and printed) (`colar_generate_vs_coconut`, target <= 1.2). --no-colar skips it.

The last two lines are `speedup_vs_batch1_recompute=<x>` and `overhead_vs_bare_forward=<x>`.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch
from accelerate.utils import set_seed

from atp_latent.data.sequences import Curriculum, SequenceBuilder, builder_for, collate, left_pad
from atp_latent.data.synthetic import SynthConfig, generate_benchmark
from atp_latent.modeling.engine import backbone_forward, new_cache
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.reference import reference_row
from atp_latent.modeling.tokenizer import build_word_tokenizer, latent_token_ids

SPEEDUP_TARGET = 20.0
OVERHEAD_TARGET = 1.3
CODI_TRAIN_TARGET, CODI_GENERATE_TARGET = 2.2, 1.2  # CODI / Coconut at the same shape
COLAR_GENERATE_TARGET = 1.2  # CoLaR / Coconut generation at the same number of latents


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=256, help="problems for the engine and bare-pass timings")
    p.add_argument("--n-baseline", type=int, default=32, help="problems for the batch-1 reference")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--preset", default="llama-tiny")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed repeats of engine and bare per batch (interleaved); the minimum is kept")
    p.add_argument("--breakdown", action="store_true", help="also time the pieces of the engine's loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-codi", dest="codi", action="store_false", help="skip CODI against Coconut")
    p.add_argument("--no-colar", dest="colar", action="store_false", help="skip CoLaR against Coconut")
    return p.parse_args(argv)


def build(args):
    cfg = SynthConfig(n_test=max(500, args.n, args.n_baseline), seed=args.seed)
    bench = generate_benchmark(cfg)
    tok = build_word_tokenizer([p.question for p in bench["train"]])
    set_seed(args.seed)  # python, numpy and torch
    lm = build_tiny_model(args.preset, tok, seed=args.seed).eval()
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=4)
    reasoner = LatentReasoner(lm, spec).eval()
    with torch.no_grad():  # never stop: logits (continue=+5, stop=-5) whatever z is
        last = reasoner.stop_head.mlp[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, -5.0]))
    builder = builder_for(tok, spec)
    prompts = [builder.eval_prompt(p.question) for p in bench["test"][: max(args.n, args.n_baseline)]]
    return tok, reasoner, prompts, bench


def codi_vs_coconut(args, tok, bench) -> tuple[float, float, dict]:
    """(CODI / Coconut seconds per training step, per generated batch, details): one tiny LM shared by both, 6
    latents each; min over repeats after a warm-up."""
    cur = Curriculum(latents_per_step=2, max_latent_stage=3, stage_offset=4)
    set_seed(args.seed)
    lm = build_tiny_model(args.preset, tok, seed=args.seed)
    models = {m: LatentReasoner(lm, ReasonerSpec.for_method(m, latents_per_step=2, max_latent_stage=3))
              for m in ("coconut", "codi")}
    train = bench["train"][: args.batch_size]
    batches = {m: collate([SequenceBuilder(tok, m, cur, teacher=m == "codi").build(p, cur.stage(0)) for p in train],
                          tok.pad_token_id) for m in models}

    def step(m):
        out = models[m](batches[m])
        out["loss"].backward()
        lm.zero_grad(set_to_none=True)
        models[m].zero_grad(set_to_none=True)

    _, _, end_id = latent_token_ids(tok)
    builder = builder_for(tok, models["codi"].spec)
    prompts = [builder.eval_prompt(p.question) for p in bench["test"][: args.n]]
    eval_batches = make_batches(prompts, args.batch_size, tok.pad_token_id)
    kw = dict(end_id=end_id, eos_id=-1, pad_id=tok.pad_token_id, max_new_tokens=args.max_new_tokens)

    def gen(m):
        return [models[m].answer(*b, **kw) for b in eval_batches]

    times = {}
    for m in models:
        models[m].train()
        step(m)  # warm-up
        models[m].eval()
        gen(m)
    slots = {m: {int(st.n_active.max()) for st, _ in gen(m)} for m in models}
    for _ in range(max(args.repeats, 3)):
        for m in models:
            models[m].train()
            t, _ = timed(lambda m=m: step(m))
            times[("train", m)] = min(times.get(("train", m), float("inf")), t)
            models[m].eval()
            t, _ = timed(lambda m=m: gen(m))
            times[("gen", m)] = min(times.get(("gen", m), float("inf")), t)
    train_ratio = times[("train", "codi")] / times[("train", "coconut")]
    gen_ratio = times[("gen", "codi")] / times[("gen", "coconut")]
    return train_ratio, gen_ratio, {"times": times, "slots": slots, "nb": len(eval_batches)}


def colar_vs_coconut(args, tok, bench) -> tuple[float, dict]:
    """(CoLaR / Coconut seconds per generated batch set, details): one tiny LM shared by both, 6 latents each (Coconut
    c = 2 x 3 groups, CoLaR 6 x 1), each with its own evaluation prompts; min over repeats after a warm-up."""
    set_seed(args.seed)
    lm = build_tiny_model(args.preset, tok, seed=args.seed).eval()
    _, _, end_id = latent_token_ids(tok)
    specs = {"coconut": ReasonerSpec.for_method("coconut", latents_per_step=2, max_latent_stage=3),
             "colar": ReasonerSpec.for_method("colar", latents_per_step=1, max_latent_stage=6)}
    models = {m: LatentReasoner(lm, spec).eval() for m, spec in specs.items()}
    with torch.no_grad():  # the <|end-latent|> logit is 0 while the others are noise: it is (almost) never the argmax
        lm.get_output_embeddings().weight[end_id] = 0
    batches = {m: make_batches([builder_for(tok, spec).eval_prompt(p.question) for p in bench["test"][: args.n]],
                               args.batch_size, tok.pad_token_id) for m, spec in specs.items()}
    kw = dict(end_id=end_id, eos_id=-1, pad_id=tok.pad_token_id, max_new_tokens=args.max_new_tokens)

    @torch.no_grad()
    def gen(m):
        return [models[m].answer(*b, **kw) for b in batches[m]]

    slots = {m: {int(st.n_active.min()) for st, _ in gen(m)} for m in models}  # warm-up and the check
    times = {}
    for _ in range(max(args.repeats, 3)):
        for m in models:
            t, _ = timed(lambda m=m: gen(m))
            times[m] = min(times.get(m, float("inf")), t)
    return times["colar"] / times["coconut"], {"times": times, "slots": slots, "nb": len(batches["colar"])}


def make_batches(prompts, batch_size: int, pad_id: int):
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        ids, mask = left_pad([p for p, _ in chunk], pad_id)
        out.append((ids, mask, torch.tensor([s for _, s in chunk], dtype=torch.long)))
    return out


def run_engine(reasoner, batch, ids_kw):
    ids, mask, slots = batch
    return reasoner.answer(ids, mask, slots, **ids_kw)


def prepare_bare(lm, batch, state, gen, end_id: int):
    """Inputs of every pass the engine ran on `batch`, as plain tensors (the same numbers it computed)."""
    ids, mask, _ = batch
    B, P = ids.shape
    table = lm.get_input_embeddings()
    L, T = state.z.shape[1], gen.tokens.shape[1]
    with torch.no_grad():
        prefix_emb = table(ids)
        latent_emb = state.z.to(table.weight.dtype)
        answer_in = torch.cat([torch.full((B, 1), end_id, dtype=torch.long), gen.tokens[:, :-1]], dim=1)
        answer_emb = table(answer_in)
    full_mask = torch.cat([mask.long(), state.active.long(), torch.ones(B, T, dtype=torch.long)], dim=1)
    prefix_pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    n_prefix = mask.long().sum(-1)
    steps = []  # (embeds [B,1,d], mask [B,P+k+1], positions [B,1], with_head)
    for t in range(L):
        steps.append((latent_emb[:, t : t + 1].contiguous(), full_mask[:, : P + t + 1].contiguous(),
                      (n_prefix + t)[:, None].contiguous(), False))
    for t in range(T):
        steps.append((answer_emb[:, t : t + 1].contiguous(), full_mask[:, : P + L + t + 1].contiguous(),
                      (n_prefix + L + t)[:, None].contiguous(), True))
    return prefix_emb, mask.long(), prefix_pos, steps


@torch.no_grad()
def run_bare(lm, prepared, collect: bool = False):
    prefix_emb, prefix_mask, prefix_pos, steps = prepared
    head = lm.get_output_embeddings()
    cache = new_cache(lm)
    backbone_forward(lm, prefix_emb, prefix_mask, prefix_pos, cache)
    outs = []
    for emb, mask, pos, with_head in steps:
        hidden = backbone_forward(lm, emb, mask, pos, cache)
        if with_head:
            logits = head(hidden[:, -1])
            if collect:
                outs.append(logits.argmax(-1))
    return outs


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@torch.no_grad()
def breakdown(reasoner, batch, prepared):
    """Time the engine's non-backbone pieces on one batch: the heads and the decode-step bookkeeping."""
    ids, mask, _ = batch
    lm = reasoner.lm
    B = ids.shape[0]
    h = torch.randn(B, lm.config.hidden_size)
    reps = 50
    rows = []
    t, _ = timed(lambda: [reasoner.latent_head(h) for _ in range(reps)])
    rows.append(("latent_head (per slot)", t / reps))
    t, _ = timed(lambda: [reasoner.stop_head(h) for _ in range(reps)])
    rows.append(("stop_head (per consulted slot)", t / reps))
    logits = torch.randn(B, len(lm.get_input_embeddings().weight))
    done = torch.zeros(B, dtype=torch.bool)

    def decode_bookkeeping():
        lp = torch.log_softmax(logits, -1)
        nxt = logits.argmax(-1)
        g = lp.gather(-1, nxt[:, None]).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, 0), nxt)
        torch.where(done, torch.zeros_like(g), g)
        return bool((done | (nxt == 2)).all())

    t, _ = timed(lambda: [decode_bookkeeping() for _ in range(reps)])
    rows.append(("decode step: log_softmax/argmax/gather/where", t / reps))
    m = prepared[3][-1][1]
    t, _ = timed(lambda: [torch.cat([m, torch.ones(B, 1, dtype=m.dtype)], 1) for _ in range(reps)])
    rows.append(("mask torch.cat per pass", t / reps))
    emb = lm.get_input_embeddings()
    cur = torch.zeros(B, 1, dtype=torch.long)
    t, _ = timed(lambda: [emb(cur) for _ in range(reps)])
    rows.append(("embedding lookup per token", t / reps))
    # one single-column backbone pass, for scale
    _, _, _, steps = prepared
    e, mk, pos, _ = steps[0]
    cache = new_cache(lm)
    backbone_forward(lm, prepared[0], prepared[1], prepared[2], cache)
    t, _ = timed(lambda: backbone_forward(lm, e, mk, pos, cache))
    rows.append(("one single-column backbone pass (for scale)", t))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)  # python, numpy and torch
    tok, reasoner, prompts, bench = build(args)
    lm = reasoner.lm
    _, _, end_id = latent_token_ids(tok)
    eos_id, pad_id, T = tok.eos_token_id, tok.pad_token_id, args.max_new_tokens
    kw = dict(end_id=end_id, eos_id=eos_id, pad_id=pad_id, max_new_tokens=T)
    batches = make_batches(prompts[: args.n], args.batch_size, pad_id)
    n_slots = prompts[0][1]

    print(f"preset={args.preset} vocab={len(tok)} threads={torch.get_num_threads()} n={args.n} "
          f"batch={args.batch_size} latent_slots={n_slots} max_new_tokens={T} "
          f"n_baseline={args.n_baseline} repeats={args.repeats}")

    # ---- warm-up + reference outputs of each batch (untimed), bare inputs prepared from them ----
    with torch.no_grad():
        first = [run_engine(reasoner, b, kw) for b in batches]
    prepared = [prepare_bare(lm, b, st, g, end_id) for b, (st, g) in zip(batches, first, strict=True)]
    run_bare(lm, prepared[0])  # warm-up
    full_rows = sum(int((g.lengths == T).sum()) for _, g in first)
    all_active = all(bool(st.active.all()) and st.active.shape[1] == n_slots for st, _ in first)
    same = all(
        torch.equal(torch.stack(run_bare(lm, p, collect=True), 1), g.tokens)
        for p, (_, g) in zip(prepared[:1], first[:1], strict=True)
    )
    passes_engine = first[0][0].n_passes + first[0][1].n_passes

    # ---- engine and bare, interleaved per batch, min over repeats ----
    eng_t = [float("inf")] * len(batches)
    bare_t = [float("inf")] * len(batches)
    for _ in range(args.repeats):
        for i, b in enumerate(batches):
            with torch.no_grad():
                t, _ = timed(lambda b=b: run_engine(reasoner, b, kw))
            eng_t[i] = min(eng_t[i], t)
            t, _ = timed(lambda i=i: run_bare(lm, prepared[i]))
            bare_t[i] = min(bare_t[i], t)
    n_eng = sum(b[0].shape[0] for b in batches)
    eng_s, bare_s = sum(eng_t), sum(bare_t)

    # ---- baseline: batch 1, full recompute ----
    base_prompts = prompts[: args.n_baseline]
    ref_kw = dict(latent_head=reasoner.latent_head, stop_head=reasoner.stop_head, c=reasoner.spec.latents_per_step)
    reference_row(lm, base_prompts[0][0], n_slots, end_id, eos_id, T, **ref_kw)  # warm-up
    t0 = time.perf_counter()
    refs = [reference_row(lm, p, s, end_id, eos_id, T, **ref_kw) for p, s in base_prompts]
    base_s = time.perf_counter() - t0
    # agreement with the engine on the same problems (float noise across batching may flip a rare argmax)
    eng_tokens = torch.cat([g.tokens for _, g in first])[: len(refs)]
    agree = sum(r["tokens"] == eng_tokens[i, : len(r["tokens"])].tolist() for i, r in enumerate(refs))
    passes_ref = 2 * n_slots + T  # h at every slot is recomputed, then the extended sequence, then T tokens

    eng_pps = n_eng / eng_s
    base_pps = len(refs) / base_s
    bare_pps = n_eng / bare_s
    speedup = eng_pps / base_pps
    overhead = eng_s / bare_s
    nb = len(batches)

    print(f"checks: rows decoding all {T} tokens: {full_rows}/{n_eng}; all {n_slots} slots active: {all_active}; "
          f"bare argmaxes == engine tokens (batch 0): {same}; reference == engine tokens: {agree}/{len(refs)}")
    print()
    print(f"{'path':<28}{'problems/s':>12}{'ms/batch':>12}{'passes':>22}")
    print(f"{f'engine (batch {args.batch_size})':<28}{eng_pps:>12.1f}{1e3 * eng_s / nb:>12.1f}"
          f"{f'{passes_engine} per batch':>22}")
    print(f"{'bare forward passes':<28}{bare_pps:>12.1f}{1e3 * bare_s / nb:>12.1f}"
          f"{f'{1 + n_slots + T} per batch':>22}")
    print(f"{'reference (batch 1)':<28}{base_pps:>12.1f}{1e3 * base_s / len(refs):>12.1f}"
          f"{f'{passes_ref} full per row':>22}")
    print("(reference ms/batch is ms per problem)")

    if args.breakdown or overhead > OVERHEAD_TARGET:
        print()
        print("engine pieces outside the backbone passes (ms, one batch):")
        rows = breakdown(reasoner, batches[0], prepared[0])
        for name, t in rows:
            print(f"  {name:<48}{1e3 * t:>8.3f}")
        per = dict(rows)
        est = (n_slots * (per["latent_head (per slot)"] + per["mask torch.cat per pass"])
               + (n_slots // reasoner.spec.latents_per_step) * per["stop_head (per consulted slot)"]
               + T * (per["decode step: log_softmax/argmax/gather/where"] + per["mask torch.cat per pass"]
                      + per["embedding lookup per token"]))
        print(f"  {'estimated sum per batch':<48}{1e3 * est:>8.3f}   "
              f"(engine - bare = {1e3 * (eng_s - bare_s) / nb:.3f})")

    if args.codi:
        train_ratio, gen_ratio, det = codi_vs_coconut(args, tok, bench)
        t = det["times"]
        print()
        print(f"CODI vs Coconut (6 latents; training batch {args.batch_size}; generation {det['nb']} batches x "
              f"{T} tokens; latents filled at evaluation: coconut {det['slots']['coconut']}, codi {det['slots']['codi']})")
        print(f"  training step (forward + backward) ms: coconut {1e3 * t[('train', 'coconut')]:.1f}, "
              f"codi {1e3 * t[('train', 'codi')]:.1f}")
        print(f"  generation ms: coconut {1e3 * t[('gen', 'coconut')]:.1f}, codi {1e3 * t[('gen', 'codi')]:.1f}")
        print(f"target codi train step <= {CODI_TRAIN_TARGET:g}x coconut: "
              f"{'met' if train_ratio <= CODI_TRAIN_TARGET else 'NOT met'}")
        print(f"target codi generation <= {CODI_GENERATE_TARGET:g}x coconut: "
              f"{'met' if gen_ratio <= CODI_GENERATE_TARGET else 'NOT met'}")
        print(f"codi_train_step_vs_coconut={train_ratio:.3f}")
        print(f"codi_generate_vs_coconut={gen_ratio:.3f}")

    if args.colar:
        ratio, det = colar_vs_coconut(args, tok, bench)
        print()
        print(f"CoLaR vs Coconut (6 latents; generation {det['nb']} batches x {T} tokens; fewest latents filled by a "
              f"row: coconut {det['slots']['coconut']}, colar {det['slots']['colar']})")
        print(f"  generation ms: coconut {1e3 * det['times']['coconut']:.1f}, colar {1e3 * det['times']['colar']:.1f}")
        print(f"target colar generation <= {COLAR_GENERATE_TARGET:g}x coconut: "
              f"{'met' if ratio <= COLAR_GENERATE_TARGET else 'NOT met'}")
        print(f"colar_generate_vs_coconut={ratio:.3f}")

    print()
    print(f"target speedup >= {SPEEDUP_TARGET:g}: {'met' if speedup >= SPEEDUP_TARGET else 'NOT met'}")
    print(f"target overhead <= {OVERHEAD_TARGET:g}: {'met' if overhead <= OVERHEAD_TARGET else 'NOT met'}")
    print(f"speedup_vs_batch1_recompute={speedup:.2f}")
    print(f"overhead_vs_bare_forward={overhead:.3f}")


if __name__ == "__main__":
    main()
