"""GPU smoke test at the paper's scale: ATP SFT steps and one GRPO step on a LLaMA-3.2-1B-shaped model.

The model is randomly initialised from LLaMA-3.2-1B's shape (no weights needed); data is the synthetic
benchmark. Prints step times, tokens per second and peak GPU memory. `--cpu` runs a small shape so CI
exercises the same code path. Asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import torch

from atp_latent.config import load_config
from atp_latent.data.sequences import Curriculum, SequenceBuilder, builder_for, collate
from atp_latent.data.synthetic import SynthConfig, generate_benchmark
from atp_latent.modeling.factory import tiny_config
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import group_advantages, grpo_update, rollout
from atp_latent.training.sft import corpus_of


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="small shape on CPU (what CI runs)")
    ap.add_argument("--sft-steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--questions", type=int, default=None)
    ap.add_argument("--group-size", type=int, default=None)
    args = ap.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    device = torch.device("cpu" if cpu else "cuda")
    preset = "llama-tiny" if cpu else "llama-1b-shape"
    bs = args.batch_size or (4 if cpu else 32)
    steps = args.sft_steps or (2 if cpu else 5)
    B, G = args.questions or (2 if cpu else 16), args.group_size or (4 if cpu else 8)
    dtype = torch.bfloat16 if not cpu else torch.float32
    torch.manual_seed(0)

    data = generate_benchmark(SynthConfig(seed=0, n_train=bs * (steps + 1) + B, n_val=8, n_test=8, n_ood=8))["train"]
    tok = build_word_tokenizer(corpus_of(data))
    from transformers import AutoModelForCausalLM

    vocab = len(tok) if cpu else 128256  # LLaMA-3's vocabulary size, so embedding and logits cost what they do
    cfg = tiny_config(preset, vocab, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    t0 = time.time()
    lm = AutoModelForCausalLM.from_config(cfg).to(device)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=10)
    model = LatentReasoner(lm, spec).to(device)
    n_params = sum(p.numel() for p in model.lm.parameters())
    print(f"device={torch.cuda.get_device_name() if not cpu else 'cpu'} preset={preset} params={n_params / 1e6:.1f}M "
          f"(+ decoder and heads) build={time.time() - t0:.1f}s")

    # --- ATP SFT at the final stage: every step latent, 20 latent slots ---
    cur = Curriculum(latents_per_step=2, max_latent_stage=10)
    builder = SequenceBuilder(tok, "atp", cur, mask_surplus=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    model.train()
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
    times, tokens = [], 0
    for i in range(steps + 1):  # the first step warms up and is not timed
        batch = collate([builder.build(p, stage=11) for p in data[i * bs: (i + 1) * bs]], tok.pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        if not cpu:
            torch.cuda.synchronize()
        t = time.time()
        with torch.autocast(device.type, dtype=dtype, enabled=not cpu):
            out = model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if not cpu:
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.time() - t)
            tokens += int(batch["prefix_mask"].sum() + batch["active"].sum() + batch["suffix_mask"].sum())
    sft_step = sum(times) / len(times)
    print(f"sft: batch={bs} latent_slots=20 step={sft_step:.3f}s tokens/s={tokens / sum(times):.0f} "
          f"loss={out['loss'].item():.3f}")
    if not cpu:
        print(f"sft: peak_memory={torch.cuda.max_memory_allocated() / 2**30:.1f}GiB")

    # --- one GRPO step: B questions x G samples, coherence decoding, minibatch updates ---
    rl_cfg = load_config(None, [f"rl.questions_per_step={B}", f"rl.group_size={G}", "rl.minibatch_size=16"])
    model.eval()
    model.decoder.requires_grad_(False)
    from accelerate import Accelerator

    acc = Accelerator(cpu=cpu)
    if not cpu:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t = time.time()
    with torch.autocast(device.type, dtype=dtype, enabled=not cpu):
        traj = rollout(model, builder_for(tok, spec), data[:B], rl_cfg, torch.Generator(device).manual_seed(0), device)
        t_roll = time.time() - t
        adv = group_advantages(traj.rewards, G).to(device)
        if not adv.abs().sum():  # a random model earns equal rewards; give the update real work
            adv = torch.randn(adv.shape, generator=torch.Generator().manual_seed(1)).to(device)
        grpo_update(model, model, opt, acc, traj, adv, rl_cfg, torch.Generator().manual_seed(0))
    if not cpu:
        torch.cuda.synchronize()
    t_rl = time.time() - t
    gen_tokens = int(traj.batch["rl_token_mask"].sum() + traj.batch["rl_active"].sum())
    print(f"rl: rollouts={B * G} step={t_rl:.2f}s (rollout+coherence {t_roll:.2f}s) "
          f"sampled_tokens/s={gen_tokens / t_roll:.0f}")
    if not cpu:
        print(f"rl: peak_memory={torch.cuda.max_memory_allocated() / 2**30:.1f}GiB")


if __name__ == "__main__":
    main()
