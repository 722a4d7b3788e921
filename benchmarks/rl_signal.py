"""Where GRPO's learning signal comes from on an ATP checkpoint, and whether it transfers (docs/experiment-log.md).

Three measurements, each on the trainer's own `rollout` / `grpo_update`, reward = accuracy only:

  headroom   per problem: greedy right or wrong, and how often G sampled rollouts are right, for several
             (latent exploration k, answer temperature T) pairs: which source of randomness makes groups differ
  onbatch    updates on fresh rollouts of one fixed set of questions: does the update raise their expected
             reward (measured with many rollouts from one fixed generator, so before/after are paired)?
  transfer   updates cycling over a pool of training questions: expected and greedy accuracy on the pool and on
             held-out training questions

    python benchmarks/rl_signal.py headroom --run results/cpu/seed-0/runs/atp --n 400 --settings 1,1 0.0001,1 3,1 1,0.3
    python benchmarks/rl_signal.py onbatch --run results/cpu/seed-0/runs/atp --k 10 --T 0.3 --lr 2e-5 --iters 20
    python benchmarks/rl_signal.py transfer --run results/cpu/seed-0/runs/atp --k 10 --T 0.3 --lr 1e-4 --iters 24

CPU, one thread; a few minutes each. The data defaults to the run's own training file (its config).
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch
from accelerate import Accelerator

from atp_latent.config import load_config
from atp_latent.data.formats import load_records
from atp_latent.evaluation.evaluate import evaluate, load_for_eval
from atp_latent.progress import quiet_library_bars
from atp_latent.training.rl import freeze_for_rl, group_advantages, grpo_update, rollout
from atp_latent.training.runs import run_dir_of

RL_CONFIG = "src/atp_latent/configs/cpu/atp_rl.yaml"


def rl_config(k: float, T: float, lr: float = 2e-5, extra: tuple[str, ...] = ()):
    return load_config(RL_CONFIG, [f"rl.latent_temperature={k}", f"rl.temperature={T}", "rl.w_coh=0", "rl.w_fmt=0",
                                   f"rl.lr={lr}", *extra])


def success(model, builder, problems, cfg, group_size: int, seed: int, chunk: int = 50) -> torch.Tensor:
    """[len(problems), group_size] accuracy of sampled rollouts, from one generator seeded with `seed`."""
    cfg = copy.deepcopy(cfg)
    cfg.rl.group_size = group_size
    g = torch.Generator().manual_seed(seed)
    return torch.cat([rollout(model, builder, problems[s: s + chunk], cfg, g, "cpu").terms["acc"].view(-1, group_size)
                      for s in range(0, len(problems), chunk)]).float()


def headroom(args, model, builder, problems):
    problems = problems[: args.n]
    _, rows = evaluate(model, builder, problems, batch_size=100, progress=False)
    greedy = torch.tensor([bool(r["correct"]) for r in rows])
    wrong = ~greedy
    print(f"{len(problems)} problems, greedy accuracy {100 * greedy.float().mean():.1f}%")
    # The last column: of the groups with a signal, the share on problems greedy decoding gets wrong, the only ones
    # whose lesson can change a greedy answer (the rest teach the sampler to answer as greedy already does).
    print("| k | T | sampled acc | greedy-wrong with >= 1 correct | their mean success | groups with a signal | "
          "of those, on greedy-wrong problems |")
    for setting in args.settings:
        k, T = (float(x) for x in setting.split(","))
        frac = success(model, builder, problems, rl_config(k, T), 8, seed=0).mean(1)
        signal = (frac > 0) & (frac < 1)
        print(f"| {k:g} | {T:g} | {100 * frac.mean():.1f} | {100 * (frac[wrong] > 0).float().mean():.0f}% | "
              f"{100 * frac[wrong].mean():.1f}% | {100 * signal.float().mean():.0f}% | "
              f"{100 * (signal & wrong).sum() / max(int(signal.sum()), 1):.0f}% |", flush=True)


def _trainer(model, cfg):
    """The trainer's optimizer and accelerate wrapper (rl.train_lm honoured; the decoder stays frozen)."""
    freeze_for_rl(model, cfg)
    accelerator = Accelerator(cpu=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.rl.lr, weight_decay=0.0)
    wrapped, opt = accelerator.prepare(model, opt)
    raw = accelerator.unwrap_model(wrapped)
    raw.eval()
    return accelerator, wrapped, opt, raw


def _update(accelerator, wrapped, opt, raw, builder, questions, cfg, gens):
    traj = rollout(raw, builder, questions, cfg, gens[0], "cpu")
    grpo_update(wrapped, opt, accelerator, traj, group_advantages(traj.rewards, cfg.rl.group_size), cfg, gens[1])
    return traj


def onbatch(args, model, builder, problems):
    questions = problems[1000:1032]
    cfg = rl_config(args.k, args.T, args.lr, tuple(args.set))
    accelerator, wrapped, opt, raw = _trainer(model, cfg)
    gens = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    print(f"before: expected accuracy {100 * success(raw, builder, questions, cfg, 32, 123).mean():.1f}%")
    for it in range(args.iters):
        traj = _update(accelerator, wrapped, opt, raw, builder, questions, cfg, gens)
        if (it + 1) % max(1, args.iters // 4) == 0:
            print(f"update {it + 1}: rollout acc {100 * traj.terms['acc'].float().mean():.1f}%, expected accuracy "
                  f"{100 * success(raw, builder, questions, cfg, 32, 123).mean():.1f}%", flush=True)


def transfer(args, model, builder, problems):
    pool, held = problems[2000: 2000 + args.pool], problems[5000:5128]
    cfg = rl_config(args.k, args.T, args.lr, ("rl.questions_per_step=32", *args.set))
    accelerator, wrapped, opt, raw = _trainer(model, cfg)
    gens = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))

    def measure(ps):
        e = success(raw, builder, ps, cfg, 16, 123, chunk=len(ps)).mean()
        greedy = evaluate(raw, builder, ps, batch_size=128, progress=False)[0].accuracy
        return f"E[R] {100 * e:.1f} greedy {100 * greedy:.1f}"

    print("before: pool", measure(pool[:128]), "| held-out", measure(held), flush=True)
    for it in range(args.iters):
        s = (it * 32) % args.pool
        _update(accelerator, wrapped, opt, raw, builder, pool[s: s + 32], cfg, gens)
        if (it + 1) % max(1, args.iters // 3) == 0:
            print(f"update {it + 1}: pool", measure(pool[:128]), "| held-out", measure(held), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["headroom", "onbatch", "transfer"])
    p.add_argument("--run", required=True, help="an ATP SFT run directory or checkpoint")
    p.add_argument("--data", help="training problems (JSONL); default: the run's data.train")
    p.add_argument("--n", type=int, default=400, help="headroom: problems")
    p.add_argument("--settings", nargs="+", default=["1,1", "0.0001,1", "3,1", "1,0.3"], help="headroom: k,T pairs")
    p.add_argument("--k", type=float, default=10.0, help="latent exploration (rl.latent_temperature)")
    p.add_argument("--T", type=float, default=0.3, help="answer temperature")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--pool", type=int, default=128, help="transfer: training questions cycled over")
    p.add_argument("--set", action="append", default=[], help="extra rl.* overrides, e.g. rl.train_lm=false")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    quiet_library_bars()
    warnings.filterwarnings("ignore")
    model, _, builder = load_for_eval(args.run)
    data = args.data
    if data is None:  # the run's own training file
        config = run_dir_of(args.run) / "config.yaml"
        if not config.is_file():
            raise SystemExit(f"{args.run}: no config.yaml in its run directory; pass --data")
        data = load_config(str(config)).data.train
    {"headroom": headroom, "onbatch": onbatch, "transfer": transfer}[args.what](args, model, builder,
                                                                             load_records(data))


if __name__ == "__main__":
    main()
