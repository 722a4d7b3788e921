"""`atp-latent` command line: data, train, eval, explain, quickstart."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _device(name: str | None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cmd_data_check(args) -> int:
    from atp_latent.data.formats import check_files

    return check_files(args.files)


def cmd_data_synth(args) -> int:
    from atp_latent.data.synthetic import SynthConfig, write_benchmark

    cfg = SynthConfig.hard() if args.difficulty == "hard" else SynthConfig()
    cfg.seed = args.seed
    for name in ("n_train", "n_val", "n_test", "n_ood"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    paths = write_benchmark(args.out, cfg)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_train(args) -> int:
    from atp_latent.config import load_config

    cfg = load_config(args.config, args.set)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.name:
        cfg.name = args.name
    if args.num_processes and args.num_processes > 1:
        return _launch(args)
    from atp_latent.modeling.methods import is_rl

    if is_rl(cfg.method.name):
        from atp_latent.training.rl import train_rl

        train_rl(cfg, resume=args.resume)
    else:
        from atp_latent.training.sft import train

        train(cfg, resume=args.resume)
    return 0


def _launch(args) -> int:
    """Re-run this command under `accelerate launch` with N processes (gloo on CPU)."""
    import subprocess

    argv, skip = [], False
    for a in args.argv:  # drop the launcher's own options; the rest runs in every process
        if skip:
            skip = False
        elif a in ("--num-processes", "--port"):
            skip = True
        elif not a.startswith(("--num-processes=", "--port=")):
            argv.append(a)
    # torch.distributed.run under the hood; on a machine without CUDA accelerate picks gloo (MULTI_CPU).
    device = ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *device, "--num_processes", str(args.num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(args.port), "-m", "atp_latent.cli", *argv]
    return subprocess.call(cmd)


def cmd_eval(args) -> int:
    from atp_latent.evaluation.benchmarks import load_named
    from atp_latent.evaluation.evaluate import (
        default_max_new_tokens,
        evaluate,
        load_for_eval,
        markdown_table,
        mean_std,
        pass_at_ks,
        right_counts,
        rollout_policy,
        summarize,
    )
    from atp_latent.training.runs import checkpoint_weights, run_dir_of, run_method

    if args.temperature is not None and (not args.rollout or args.temperature < 0):
        print("atp-latent eval: --temperature needs --rollout and a value >= 0 (greedy evaluation decodes at "
              f"temperature 0), got {args.temperature}", file=sys.stderr)
        return 2
    if args.latent_temperature is not None and (not args.rollout or args.latent_temperature < 0):
        print("atp-latent eval: --latent-temperature needs --rollout and a value >= 0, got "
              f"{args.latent_temperature}", file=sys.stderr)
        return 2
    if args.num_processes and args.num_processes > 1:
        return _launch(args)
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # Under `accelerate launch` every process evaluates its shard; rows are gathered on all processes.
    state = PartialState(cpu=not torch_cuda())
    if state.num_processes > 1:  # else gloo's threads can abort the finished process at exit (SIGABRT)
        from atp_latent.training.sft import destroy_process_group_at_exit

        destroy_process_group_at_exit()
    device = _device(args.device) if state.num_processes == 1 else state.device
    weights = checkpoint_weights(args.checkpoint)
    datasets = [load_named(d, args.data_dir) for d in args.data]
    model, tok, builder = load_for_eval(weights, device)
    # A row is named by its run (the run directory), with the run's method beside it: an RL run's weights are an
    # `atp` reasoner, but the run is atp-rl.
    run = run_dir_of(weights)
    method = model.spec.method
    run_label = run_method(run) or method
    max_new = args.max_new_tokens or default_max_new_tokens(model.spec.method)
    sampled = args.latent_sample or args.rollout
    seeds = args.seeds if sampled else 1
    # --rollout samples all three parts as RL's rollouts do (z ~ N(mu, (k sigma)^2), the stop head, answer tokens).
    policy = (rollout_policy(args.temperature, args.latent_temperature) if args.rollout
              else dict(sample_latents=args.latent_sample))
    results, rows_out = {}, {}
    for name, all_problems in datasets:
        problems = all_problems[: args.limit]
        shard = problems[state.process_index:: state.num_processes]
        runs, per_sample = [], []
        for seed in range(seeds):
            _, rows = evaluate(model, builder, shard, batch_size=args.batch_size, max_new_tokens=max_new,
                               seed=seed, device=device, desc=name, progress=state.is_main_process, **policy)
            if state.num_processes > 1:
                rows = gather_object(rows)
            runs.append(summarize(rows).as_dict())
            per_sample.append(rows)
        rows_out[name] = per_sample
        res = {k: mean_std([r[k] for r in runs])[0] for k in runs[0]}
        res["accuracy_std"] = mean_std([r["accuracy"] for r in runs])[1]
        res["seeds"] = seeds
        if seeds > 1:  # the seeds are n samples of each problem: pass@k says how much sampling could find
            res["pass_at_k"] = pass_at_ks(right_counts(per_sample), seeds)
        results[name] = res
    table = markdown_table({run.name: results}, [n for n, _ in datasets], methods={run.name: run_label})
    if state.is_main_process:
        print(table)
        for name, res in results.items():
            if "pass_at_k" in res:
                print(f"{name}: " + ", ".join(f"pass@{k} {100 * v:.2f}" for k, v in res["pass_at_k"].items()))
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"run": run.name, "run_method": run_label, "checkpoint": str(weights),
                                       "method": method, "results": results, "latent_sample": args.latent_sample,
                                       "rollout": args.rollout, "temperature": policy.get("temperature", 0.0),
                                       "latent_temperature": policy.get("latent_temperature", 1.0)},
                                      indent=2))
            out.with_suffix(".md").write_text(table + "\n")
            if args.predictions:
                with open(out.with_suffix(".predictions.jsonl"), "w") as f:
                    for name, per_sample in rows_out.items():  # every sample's rows, sample by sample
                        for s, rows in enumerate(per_sample):
                            for r in rows:
                                f.write(json.dumps({"data": name, "sample": s, **r}) + "\n")
            print(f"wrote {out}")
    # Every process leaves together: one that exits while another still holds the gloo group can abort. The group is
    # destroyed here, on every process, rather than at interpreter exit only: a full-suite run on this host still
    # saw rank 1 abort (SIGABRT) after the barrier once in three runs.
    state.wait_for_everyone()
    if state.num_processes > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cmd_explain(args) -> int:
    from atp_latent.evaluation.benchmarks import load_named
    from atp_latent.evaluation.evaluate import load_for_eval
    from atp_latent.evaluation.explain import explain, format_explanation

    if not args.question and not args.data:
        raise ValueError("explain needs --question TEXT or --data FILE")
    device = _device(args.device)
    model, tok, builder = load_for_eval(args.checkpoint, device)
    if not model.spec.latent:
        raise ValueError(f"{args.checkpoint}: method '{model.spec.method}' has no latent reasoning to explain")
    questions, golds = list(args.question or []), [None] * len(args.question or [])
    if args.data:
        problems = load_named(args.data, args.data_dir)[1][: args.n]
        questions += [p.question for p in problems]
        golds += [p.answer for p in problems]
    results = explain(model, builder, questions, device=device)
    for e, gold in zip(results, golds):
        print(format_explanation(e, gold, model.spec.latents_per_step, model.spec.use_decoder) + "\n")
    return 0


def cmd_bench(args) -> int:
    from atp_latent.suite import run_bench

    return run_bench(args)


def cmd_quickstart(args) -> int:
    from atp_latent.quickstart import run_quickstart

    return run_quickstart(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atp-latent", description="Latent chain-of-thought reasoning (ATP-Latent).")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="check data files or generate the synthetic benchmark")
    dsub = data.add_subparsers(dest="data_command", required=True)
    chk = dsub.add_parser("check", help="validate data files; one line per bad record; exit 1 on any error")
    chk.add_argument("files", nargs="+")
    chk.set_defaults(func=cmd_data_check)
    syn = dsub.add_parser("synth", help="write the synthetic benchmark (train/val/test + 3 OOD test splits)")
    syn.add_argument("--out", required=True)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--difficulty", choices=["default", "hard"], default="default")
    for name in ("n_train", "n_val", "n_test", "n_ood"):
        syn.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None)
    syn.set_defaults(func=cmd_data_synth)

    tr = sub.add_parser("train", help="train a method from a YAML config")
    tr.add_argument("--config", help="YAML config (see configs/)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    tr.add_argument("--output-dir")
    tr.add_argument("--name")
    tr.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    tr.add_argument("--num-processes", type=int, default=None, help="launch N processes with accelerate")
    tr.add_argument("--port", type=int, default=29533, help="rendezvous port for --num-processes")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on data files or benchmark names")
    ev.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    ev.add_argument("--data", action="append", required=True,
                    help="file, a name (gsm8k, gsm-hard, svamp, multiarith, gsm8k-aug), or hf:NAME[:SPLIT] "
                         "(needs the hf extra) (repeatable)")
    ev.add_argument("--data-dir", default=None, help="where benchmark names resolve (default $ATP_DATA, else ../shared/data)")
    ev.add_argument("--out", default=None, help="results JSON (a .md table is written beside it)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--max-new-tokens", type=int, default=None)
    ev.add_argument("--latent-sample", action="store_true", help="sample latents instead of using mu")
    ev.add_argument("--rollout", action="store_true",
                    help="sample as RL's rollouts do: latents, the stop head and answer tokens (see --temperature)")
    ev.add_argument("--temperature", type=float, default=None, help="with --rollout: answer-token temperature (1.0)")
    ev.add_argument("--latent-temperature", type=float, default=None, metavar="K",
                    help="with --rollout: sample z ~ N(mu, (K sigma)^2), as rl.latent_temperature does (1.0); "
                         "0: z = mu, as rl.latent_policy=mean rolls out")
    ev.add_argument("--seeds", type=int, default=1,
                    help="with --latent-sample or --rollout: N samples per problem; reports mean +- std and pass@k")
    ev.add_argument("--limit", type=int, default=None, help="first N problems of each file")
    ev.add_argument("--predictions", action="store_true",
                    help="also write per-problem predictions (with --seeds N: every sample's, field `sample`)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--num-processes", type=int, default=None, help="shard the problems over N processes")
    ev.add_argument("--port", type=int, default=29534, help="rendezvous port for --num-processes")
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("explain", help="decode a trained model's latent plan to text, group by group")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--question", action="append", help="a question (repeatable)")
    ex.add_argument("--data", help="a data file or benchmark name")
    ex.add_argument("--data-dir", default=None)
    ex.add_argument("--n", type=int, default=5, help="with --data: the first N problems")
    ex.add_argument("--device", default=None)
    ex.set_defaults(func=cmd_explain)

    bn = sub.add_parser("bench", help="train and compare every method the same way; tables and plots")
    bn.add_argument("--suite", default="cpu", choices=["cpu", "gpu"],
                    help="cpu: every method on the synthetic benchmark with a tiny Llama; gpu: the same one size up "
                         "(a larger model from scratch, bf16) for one GPU")
    bn.add_argument("--seeds", type=int, default=1)
    bn.add_argument("--out", default="results/cpu")
    bn.add_argument("--data-seed", type=int, default=0, help="the synthetic data (shared by every seed)")
    bn.add_argument("--scale", type=float, default=1.0,
                    help="make every job SCALE times as long (SFT epoch size and step cap, RL steps): a trial run; "
                         "the protocol is 1")
    bn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every job (repeatable), e.g. train.mixed_precision=bf16")
    bn.add_argument("--slots", type=int, default=2, help="jobs trained at once (one CPU thread each)")
    bn.add_argument("--val-large", type=int, default=None, metavar="N",
                    help="held-out in-distribution problems per seed on which RL is judged against its SFT start "
                         "(RL's best/ is picked on val, so val cannot judge it; 0: off, and that verdict is not "
                         "given; default 5000 for the cpu suite, 500 for the gpu suite)")
    bn.add_argument("--rollouts", type=int, default=None, metavar="N",
                    help="with --val-large: also sample N answers per problem from RL's rollout policy for the RL runs "
                         "and their start (accuracy, pass@N, groups with a signal; default 8, RL's group size, for the cpu suite and 0 "
                         "for the gpu suite; 0: off)")
    bn.add_argument("--ablations", action="store_true",
                    help="also train seed 0's ablations (no KL, no stop head, no decoder, no VAE, coherence weight 0, "
                         "longer RL, lower RL lr) and report them on the val split")
    bn.set_defaults(func=cmd_bench)

    qs = sub.add_parser("quickstart", help="the main job on the embedded default (synthetic data, tiny model, CPU)")
    qs.add_argument("--out", default="quickstart", help="output folder")
    qs.add_argument("--seed", type=int, default=0)
    qs.add_argument("--scale", type=float, default=1.0,
                    help="make every job SCALE times as long (a trial run; the protocol is 1)")
    qs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every job (repeatable)")
    qs.set_defaults(func=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from atp_latent.progress import quiet_library_bars

    quiet_library_bars()  # outside a terminal: no Hugging Face bars in the logs (ours print short lines)
    from atp_latent.configtools import ConfigError
    from atp_latent.data.records import DataError

    try:
        return args.func(args)
    except (DataError, ConfigError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as e:
        if os.environ.get("ATP_DEBUG"):
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
