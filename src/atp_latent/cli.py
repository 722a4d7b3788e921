"""`atp-latent` command line: data, train, eval, compare, explain, bench, quickstart, configs (docs/cli.md).

Every bad command line, config, data file or path is one `error: ...` line on stderr and exit status BAD_INPUT.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from atp_latent.data.synthetic import REGIMES

BAD_INPUT = 1  # the exit status of every `error: ...`: usage errors, bad configs, data, paths (docs/cli.md)
# The packaged configs (configs/<tier>/*.yaml), the tiers in the order `atp-latent configs` lists them.
CONFIG_TIERS = {
    "quickstart": "the quickstart's jobs: synthetic data, a tiny Llama, CPU (atp-latent quickstart)",
    "cpu": "the CPU bench suite and its ablations (atp-latent bench --suite cpu)",
    "gpu": "the GPU bench suite: the CPU bench one size up for one GPU (atp-latent bench --suite gpu)",
    "paper": "the paper's recipe: LLaMA-3.2-1B-Instruct on GSM8k-Aug, one or more GPUs",
    "accelerate": "accelerate launch --config_file files for several GPUs or machines (not train configs)",
}


class UsageError(ValueError):
    """A bad command line: reported as one `error: ...` line, like every other bad input."""


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, see main) instead of printing usage and exiting 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class DeprecatedAlias(argparse.Action):
    """An old option name: stores into its replacement's dest and says so in one line on stderr."""

    def __init__(self, option_strings, dest, use: str, **kwargs):
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {parser.prog} {option_string} is deprecated, use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def at_least(minimum: int):
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port number."""
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {value}")
    return value


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atp-latent")
    except PackageNotFoundError:  # running from a source tree that is not installed
        from atp_latent import __version__

        return __version__


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
        elif args.command == "eval" and (a == "--seeds" or a.startswith("--seeds=")):
            argv.append(a.replace("--seeds", "--samples", 1))  # the notice was given once, here
        elif not a.startswith(("--num-processes=", "--port=")):
            argv.append(a)
    # torch.distributed.run under the hood; on a machine without CUDA accelerate picks gloo (MULTI_CPU).
    device = ["--multi_gpu"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *device, "--num_processes", str(args.num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(args.port), "-m", "atp_latent.cli", *argv]
    return subprocess.call(cmd)


def cmd_eval(args) -> int:
    from atp_latent.evaluation.datasets import load_named
    from atp_latent.evaluation.evaluate import (
        accuracy_by_steps,
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
        raise UsageError("atp-latent eval: --temperature needs --rollout and a value >= 0 (greedy evaluation "
                         f"decodes at temperature 0), got {args.temperature}")
    if args.latent_temperature is not None and (not args.rollout or args.latent_temperature < 0):
        raise UsageError("atp-latent eval: --latent-temperature needs --rollout and a value >= 0, got "
                         f"{args.latent_temperature}")
    if args.all_latents and args.rollout:
        raise UsageError("atp-latent eval: --all-latents ignores the stop head, which --rollout samples; use one")
    if args.samples > 1 and not (args.latent_sample or args.rollout):
        raise UsageError(f"atp-latent eval: --samples {args.samples} needs --latent-sample or --rollout (the greedy "
                         "evaluation gives the same answers every time)")
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
    seeds = args.samples if sampled else 1
    # --rollout samples all three parts as RL's rollouts do (z ~ N(mu, (k sigma)^2), the stop head, answer tokens).
    policy = (rollout_policy(args.temperature, args.latent_temperature) if args.rollout
              else dict(sample_latents=args.latent_sample, stop_mode="never" if args.all_latents else "greedy"))
    # --rollout with several samples of problems that have steps: which valid step orders the samples' plans follow
    diverse = bool(args.rollout and seeds > 1)
    results, rows_out = {}, {}
    for name, all_problems in datasets:
        problems = all_problems[: args.limit]
        shard = problems[state.process_index:: state.num_processes]
        runs, per_sample = [], []
        for seed in range(seeds):
            _, rows = evaluate(model, builder, shard, batch_size=args.batch_size, max_new_tokens=max_new,
                               seed=seed, device=device, desc=name, progress=state.is_main_process,
                               plans=diverse, **policy)
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
        if diverse and all(p.steps for p in problems):
            res["diversity"] = plan_diversity(problems, per_sample)
        by_steps = accuracy_by_steps(per_sample)
        if by_steps:
            res["by_steps"] = by_steps
        results[name] = res
    table = markdown_table({run.name: results}, [n for n, _ in datasets], methods={run.name: run_label})
    if state.is_main_process:
        print(table)
        for name, res in results.items():
            if "pass_at_k" in res:
                print(f"{name}: " + ", ".join(f"pass@{k} {100 * v:.2f}" for k, v in res["pass_at_k"].items()))
            if "diversity" in res:
                print(f"{name}: {diversity_line(res['diversity'])}")
            if "by_steps" in res:
                print(f"{name} by solution steps: " + ", ".join(
                    f"{k}: {100 * v['accuracy']:.1f}% ({v['problems']} problems, {v['mean_latents']:.2f} latents)"
                    for k, v in res["by_steps"].items()))
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"run": run.name, "run_method": run_label, "checkpoint": str(weights),
                                       "method": method, "results": results, "latent_sample": args.latent_sample,
                                       "rollout": args.rollout, "all_latents": args.all_latents,
                                       "temperature": policy.get("temperature", 0.0),
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


def plan_diversity(problems, per_sample: list[list[dict]]) -> dict:
    """evaluation/diversity.py's summary of n samples of each problem: their plans against the problem's valid step
    orders (data.synthetic.valid_orders), rows in the problems' order, one list per sample."""
    from atp_latent.data.synthetic import valid_orders
    from atp_latent.evaluation.diversity import ProblemRollouts, diversity_summary

    by_question = [{r["question"]: r for r in rows} for rows in per_sample]  # gathered shards come in rank order
    return diversity_summary([ProblemRollouts(valid_orders(p), [(rows[p.question].get("plan"), rows[p.question]["correct"])
                                                                for rows in by_question])
                              for p in problems])


def diversity_line(d: dict) -> str:
    """One line of a diversity summary (docs/metrics.md)."""
    if not d.get("has_plans"):
        return "plan diversity n/a (this method's latents have no readable plan)"

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x):
        return "n/a" if x is None else f"{x:.3f}"

    return (f"plans valid {pct(d['plan_validity'])} (valid and right {pct(d['valid_and_correct'])}, valid but wrong "
            f"{pct(d['valid_but_wrong'])}, invalid {pct(d['invalid_plan'])}); coverage {num(d['coverage'])}; "
            f"distinct right orders {num(d['distinct_correct_orders'])}; order entropy {num(d['order_entropy'])} "
            f"({d['order_entropy_excluded']} problems excluded); Kendall distance {num(d['kendall_distance'])} "
            f"({d['kendall_distance_excluded']} excluded); strict "
            + ", ".join(f"pass@{k} {100 * v:.2f}" for k, v in (d.get("strict_pass_at_k") or {}).items())
            + ("" if d.get("distinct_plans") is None else
               f"; distinct plans {d['distinct_plans']:.2f} of {d['n_rollouts']}; invalid because: "
               + ", ".join(f"{reason.replace('_', ' ')} {pct(x)}" for reason, x in d["invalid_reasons"].items())))


def cmd_compare(args) -> int:
    from atp_latent.data.records import DataError
    from atp_latent.evaluation.compare import compare_bench, compare_predictions, comparison_lines

    if not 0 < args.confidence < 1:
        raise UsageError(f"atp-latent compare: --confidence must be between 0 and 1, got {args.confidence}")
    if args.split and not args.bench:
        raise UsageError("atp-latent compare: --split picks a bench's test splits; it needs --bench")
    if args.bench and (len(args.a) > 1 or len(args.b) > 1):
        raise UsageError("atp-latent compare: with --bench, --a and --b name one job each (the bench pairs its "
                         "seeds itself)")
    settings = dict(claim="A > B" if args.expect == "better" else "A < B", by_steps=args.by_steps,
                    n_replicates=args.replicates, confidence=args.confidence)
    try:
        result = (compare_bench(args.bench, args.a[0], args.b[0], splits=args.split, **settings) if args.bench
                  else compare_predictions(args.a, args.b, **settings))
    except DataError:  # names its file, line and field
        raise
    except ValueError as e:
        raise UsageError(f"atp-latent compare: {e}") from None
    name_a = args.name_a or (args.a[0] if args.bench else "A")
    name_b = args.name_b or (args.b[0] if args.bench else "B")
    result.update(name_a=name_a, name_b=name_b)
    print("\n".join(comparison_lines(result, name_a, name_b)))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def cmd_explain(args) -> int:
    from atp_latent.evaluation.datasets import load_named
    from atp_latent.evaluation.evaluate import load_for_eval
    from atp_latent.evaluation.explain import explain, format_explanation

    if not args.question and not args.data:
        raise UsageError("atp-latent explain: needs --question TEXT or --data FILE")
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


def bench_out(suite: str, out: str | None, regime: str = "default") -> str:
    """Where `bench --suite SUITE` writes: --out, else results/SUITE (results/SUITE-REGIME for a regime other than
    the default); never another suite's folder (its runs would be resumed with this suite's configs and its results
    overwritten)."""
    from atp_latent.jobs import SUITES

    if out is None:
        return str(Path("results") / (suite if regime == "default" else f"{suite}-{regime}"))
    for other in SUITES:
        if other != suite and Path(out).resolve() == (Path("results") / other).resolve():
            raise UsageError(f"atp-latent bench --suite {suite}: --out {out} is the {other} suite's folder "
                             f"(the default is results/{suite})")
    results = Path(out) / "results.json"
    if results.is_file():
        try:
            data = json.loads(results.read_text())
            words = str(data.get("command", "")).split()  # older files name the suite only in their command
            other = data.get("suite") or (words[words.index("--suite") + 1] if "--suite" in words[:-1] else "cpu")
        except (ValueError, AttributeError):
            raise UsageError(f"atp-latent bench: {results} is not a bench's results.json") from None
        if other != suite:
            raise UsageError(f"atp-latent bench --suite {suite}: {out} holds the {other} suite's results "
                             f"(the default is results/{suite})")
    return out


def check_overrides(suite_name: str, overrides: list[str], ablations: bool = False) -> None:
    """Compose every job's config with the --set overrides: a bad one fails here, in one line, before any data is
    written or any job starts (each job would fail on it in its own process)."""
    from atp_latent.config import load_config
    from atp_latent.jobs import SUITES, config_path

    suite = SUITES[suite_name]
    for job in suite.jobs + (list(suite.ablations) if ablations else []):
        load_config(str(config_path(suite, job)), overrides)


def cmd_bench(args) -> int:
    from atp_latent.suite import run_bench

    args.out = bench_out(args.suite, args.out, args.regime)
    if args.claim_seeds is not None and args.claim_seeds < args.seeds:
        raise UsageError(f"atp-latent bench: --claim-seeds {args.claim_seeds} is below --seeds {args.seeds} (the rows "
                         "the claims compare get at least the seeds every row gets)")
    if args.overrides:
        check_overrides(args.suite, args.overrides, args.ablations)
    return run_bench(args)


def cmd_quickstart(args) -> int:
    from atp_latent.quickstart import run_quickstart

    if args.overrides:
        check_overrides("quickstart", args.overrides)
    return run_quickstart(args)


def packaged_configs() -> dict[str, list[str]]:
    """{tier: [config names without .yaml]} of configs/<tier>/*.yaml, tiers in CONFIG_TIERS's order."""
    from importlib import resources

    root = resources.files("atp_latent") / "configs"
    found = {d.name: sorted(f.name[: -len(".yaml")] for f in d.iterdir() if f.name.endswith(".yaml"))
             for d in root.iterdir() if d.is_dir()}
    order = [t for t in CONFIG_TIERS if t in found] + sorted(set(found) - set(CONFIG_TIERS))
    return {t: found[t] for t in order if found[t]}


def packaged_config_path(name: str) -> Path:
    """configs/TIER/NAME.yaml for `TIER/NAME` (with or without .yaml)."""
    from importlib import resources

    configs = packaged_configs()
    tier, _, config = name.removesuffix(".yaml").partition("/")
    if tier not in configs:
        raise UsageError(f"atp-latent configs: no tier {tier!r} (tiers: {', '.join(configs)}); "
                         "name a config as TIER/NAME")
    if config not in configs[tier]:
        raise UsageError(f"atp-latent configs: no config {config!r} in {tier} (atp-latent configs ls {tier} "
                         "lists them)")
    return Path(str(resources.files("atp_latent") / "configs" / tier / f"{config}.yaml"))


def standalone_config(source: Path) -> str:
    """The text of the config file `source` with its `defaults:` parents as absolute paths, so that a copy
    elsewhere composes exactly as the original does (comments and layout kept)."""
    from atp_latent.configtools import DEFAULTS_KEY, yaml_load

    text = source.read_text()
    data = yaml_load(text)
    parents = data.get(DEFAULTS_KEY) if isinstance(data, dict) else None
    if not parents:
        return text
    parents = [parents] if isinstance(parents, str) else parents
    absolute = [str((source.parent / p).resolve()) for p in parents]
    out, in_defaults = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(f"{DEFAULTS_KEY}:"):
            out.append(f"{DEFAULTS_KEY}: {json.dumps(absolute if len(absolute) > 1 else absolute[0])}\n")
            in_defaults = True
        elif in_defaults and line.startswith((" ", "-", "\t")):
            continue  # a block list of parents, replaced above
        else:
            in_defaults = False
            out.append(line)
    return "".join(out)


def cmd_configs_ls(args) -> int:
    configs = packaged_configs()
    if args.tier is not None and args.tier not in configs:
        raise UsageError(f"atp-latent configs ls: no tier {args.tier!r} (tiers: {', '.join(configs)})")
    for tier, names in configs.items():
        if args.tier in (None, tier):
            print(f"{tier}: {CONFIG_TIERS[tier]}" if tier in CONFIG_TIERS else f"{tier}:")
            for name in names:
                print(f"  {tier}/{name}")
    if args.tier is None:
        print("\ncopy one out for editing: atp-latent configs cp TIER/NAME DEST")
    return 0


def cmd_configs_cp(args) -> int:
    source = packaged_config_path(args.config)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists():
        raise FileExistsError(f"{dest} exists; not overwriting it (remove it or give another DEST)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tier = source.parent.name
    header = f"# atp-latent {package_version()}: configs/{tier}/{source.name}"
    text = standalone_config(source)
    if text != source.read_text():
        header += " (its defaults: name the installed package's files)"
    with open(dest, "x") as f:  # "x": never over a file that appeared meanwhile either
        f.write(f"{header}\n{text}")
    print(f"copied {tier}/{source.stem} to {dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `atp-latent` parser: one subparser per subcommand (docs/cli.md describes them)."""
    p = Parser(prog="atp-latent", description="Latent chain-of-thought reasoning (ATP-Latent).",
               epilog="Every bad argument, config, data file or path: one 'error: ...' line on stderr, exit status "
                      f"{BAD_INPUT}.")
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                   help="print the package version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="check data files or generate the synthetic benchmark")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    chk = dsub.add_parser("check", help="validate data files; one line per bad record; exit 1 on any error")
    chk.add_argument("files", nargs="+", metavar="FILE", help="a data file (.jsonl or .json; several allowed)")
    chk.set_defaults(func=cmd_data_check)
    syn = dsub.add_parser("synth", help="write the synthetic benchmark (train/val/test + 3 OOD test splits)")
    syn.add_argument("--out", required=True, help="output folder (one .jsonl per split)")
    syn.add_argument("--seed", type=int, default=0, help="random seed of the problems (default 0)")
    syn.add_argument("--difficulty", choices=["default", "hard"], default="default",
                     help="hard: operands up to 50 and values up to 500 (test_large: up to 999)")
    for name, what in (("n_train", "train problems (default 100000)"), ("n_val", "val problems (default 300)"),
                       ("n_test", "test problems (default 500)"),
                       ("n_ood", "problems in each OOD split: test_large, test_long, test_perturbed (default 500)")):
        syn.add_argument("--" + name.replace("_", "-"), dest=name, type=at_least(0), default=None, metavar="N",
                         help=what)
    syn.set_defaults(func=cmd_data_synth)

    tr = sub.add_parser("train", help="train a method from a YAML config")
    tr.add_argument("--config", help="YAML config file (the packaged ones: atp-latent configs)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, repeatable")
    tr.add_argument("--output-dir", help="where the run directory goes (overrides output_dir; default runs)")
    tr.add_argument("--name", help="the run directory's name (overrides name; default the start time)")
    tr.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    tr.add_argument("--num-processes", type=at_least(1), default=None, metavar="N",
                    help="launch N processes with accelerate")
    tr.add_argument("--port", type=port, default=29533, help="rendezvous port for --num-processes (default 29533)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint on data files or benchmark names")
    ev.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    ev.add_argument("--data", action="append", required=True,
                    help="file, a name (gsm8k, gsm-hard, svamp, multiarith, gsm8k-aug), or hf:NAME[:SPLIT] "
                         "(needs the hf extra) (repeatable)")
    ev.add_argument("--data-dir", default=None, help="where benchmark names resolve (default $ATP_DATA, else ../shared/data)")
    ev.add_argument("--out", default=None, help="results JSON (a .md table is written beside it)")
    ev.add_argument("--batch-size", type=at_least(1), default=64, metavar="N", help="problems per batch (default 64)")
    ev.add_argument("--max-new-tokens", type=at_least(1), default=None, metavar="N",
                    help="answer tokens to generate at most (default 16; 160 for CoT, whose answer writes the steps)")
    ev.add_argument("--latent-sample", action="store_true", help="sample latents instead of using mu")
    ev.add_argument("--rollout", action="store_true",
                    help="sample as RL's rollouts do: latents, the stop head and answer tokens (see --temperature)")
    ev.add_argument("--all-latents", action="store_true",
                    help="run every latent slot, the stop head read but ignored (what the model does with the "
                         "slots it would have skipped)")
    ev.add_argument("--temperature", type=float, default=None, help="with --rollout: answer-token temperature (1.0)")
    ev.add_argument("--latent-temperature", type=float, default=None, metavar="K",
                    help="with --rollout: sample z ~ N(mu, (K sigma)^2), as rl.latent_temperature does (1.0); "
                         "0: z = mu, as rl.latent_policy=mean rolls out")
    ev.add_argument("--samples", type=at_least(1), default=1, metavar="N",
                    help="with --latent-sample or --rollout: N samples per problem; reports mean +- std and pass@k")
    ev.add_argument("--seeds", dest="samples", type=at_least(1), default=argparse.SUPPRESS, metavar="N",
                    action=DeprecatedAlias, use="--samples", help="deprecated name of --samples")
    ev.add_argument("--limit", type=at_least(1), default=None, metavar="N", help="first N problems of each file")
    ev.add_argument("--predictions", action="store_true",
                    help="also write per-problem predictions (with --samples N: every sample's, field `sample`)")
    ev.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:1 (default cuda if available)")
    ev.add_argument("--num-processes", type=at_least(1), default=None, metavar="N",
                    help="shard the problems over N processes")
    ev.add_argument("--port", type=port, default=29534, help="rendezvous port for --num-processes (default 29534)")
    ev.set_defaults(func=cmd_eval)

    cm = sub.add_parser("compare", help="is run A better than run B? a paired bootstrap over eval's prediction files",
                        description="Compare two runs on the same problems from `atp-latent eval --predictions` "
                                    "files, or two jobs of a bench folder: A - B with a 95% interval and p-value "
                                    "from a paired bootstrap over seeds and problems (docs/metrics.md), and whether "
                                    "the claim holds.")
    cm.add_argument("--a", action="append", required=True, metavar="FILE",
                    help="a .predictions.jsonl of run A (repeatable: one per seed); with --bench, a job name")
    cm.add_argument("--b", action="append", required=True, metavar="FILE",
                    help="a .predictions.jsonl of run B (repeatable; the i-th is paired with A's i-th); with --bench, "
                         "a job name")
    cm.add_argument("--bench", default=None, metavar="DIR",
                    help="compare two jobs of this bench folder (its results.json), on the seeds both ran")
    cm.add_argument("--split", action="append", default=None, metavar="SPLIT",
                    help="with --bench: only this test split (repeatable; default every split, and all pooled); "
                         "val_large: RL against its start on the held-out problems")
    cm.add_argument("--name-a", default=None, metavar="NAME", help="what to call A in the output (default A, or the job)")
    cm.add_argument("--name-b", default=None, metavar="NAME", help="what to call B in the output (default B, or the job)")
    cm.add_argument("--expect", choices=["better", "worse"], default="better",
                    help="the claim judged: A better than B (default) or worse; it holds when the interval "
                         "excludes 0 on that side")
    cm.add_argument("--by-steps", action="store_true",
                    help="also compare the problems of each number of solution steps on their own")
    cm.add_argument("--replicates", type=at_least(1), default=None, metavar="N",
                    help="bootstrap replicates (default 10000)")
    cm.add_argument("--confidence", type=float, default=0.95, metavar="C", help="the interval's confidence (default 0.95)")
    cm.add_argument("--out", default=None, metavar="FILE", help="also write the comparison as JSON")
    cm.set_defaults(func=cmd_compare)

    ex = sub.add_parser("explain", help="decode a trained model's latent plan to text, group by group")
    ex.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory of a latent method")
    ex.add_argument("--question", action="append", help="a question (repeatable)")
    ex.add_argument("--data", help="a data file or benchmark name")
    ex.add_argument("--data-dir", default=None,
                    help="where benchmark names resolve (default $ATP_DATA, else ../shared/data)")
    ex.add_argument("--n", type=at_least(1), default=5, metavar="N",
                    help="with --data: the first N problems (default 5)")
    ex.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:1 (default cuda if available)")
    ex.set_defaults(func=cmd_explain)

    bn = sub.add_parser("bench", help="train and compare every method the same way; tables and plots")
    bn.add_argument("--suite", default="cpu", choices=["cpu", "gpu"],
                    help="cpu: every method on the synthetic benchmark with a tiny Llama; gpu: the same one size up "
                         "(a larger model from scratch, bf16) for one GPU")
    bn.add_argument("--seeds", type=at_least(1), default=1, metavar="N",
                    help="train every job with N seeds (training seeds 0..N-1, on the same data); default 1")
    bn.add_argument("--claim-seeds", type=at_least(1), default=None, metavar="N",
                    help="train the rows a regime's claims compare (and what they start from) with N seeds, the other "
                         "rows with --seeds (default 5 for --regime many-plans: CoT-SFT, Coconut, SIM-CoT, ATP SFT, "
                         "ATP-RL with the full reward, with coherence weight 0 and with coherence alone; otherwise "
                         "--seeds)")
    bn.add_argument("--out", default=None,
                    help="output folder (default results/SUITE: results/cpu or results/gpu); never another suite's")
    bn.add_argument("--data-seed", type=int, default=0,
                    help="seed of the synthetic data, shared by every training seed (default 0)")
    bn.add_argument("--regime", default="default", choices=list(REGIMES),
                    help="the synthetic benchmark's regime: default, or many-plans (3-5 steps with independent "
                         "branches, at least two valid step orders per problem, each training label a valid order "
                         "drawn uniformly; default output results/SUITE-many-plans)")
    bn.add_argument("--jobs", type=lambda v: [j for j in v.split(",") if j], default=None, metavar="J1,J2,...",
                    help="train and report only these jobs of the suite and the jobs they start from (e.g. "
                         "--jobs atp_rl,simcot,coconut); default every job")
    bn.add_argument("--diversity", type=at_least(0), default=None, metavar="K",
                    help="sample K rollouts of every test problem per method and report the plans' diversity (plan "
                         "validity, coverage of the valid step orders, entropy, Kendall distance, pass@k); default 8 "
                         "for --regime many-plans, 0 (off) otherwise")
    bn.add_argument("--scale", type=positive_float, default=1.0,
                    help="make every job SCALE times as long (SFT epoch size and step cap, RL steps): a trial run; "
                         "the protocol is 1, the default")
    bn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every job (repeatable), e.g. train.mixed_precision=bf16")
    bn.add_argument("--slots", type=at_least(1), default=2, metavar="N",
                    help="jobs trained at once (one CPU thread each; default 2)")
    bn.add_argument("--val-large", type=at_least(0), default=None, metavar="N",
                    help="held-out in-distribution problems per seed on which RL is judged against its SFT start "
                         "(RL's best/ is picked on val, so val cannot judge it; 0: off, and that verdict is not "
                         "given; default 5000 for the cpu suite, 500 for the gpu suite)")
    bn.add_argument("--rollouts", type=at_least(0), default=None, metavar="N",
                    help="with --val-large: also sample N answers per problem from RL's rollout policy for the RL runs "
                         "and their start (accuracy, pass@N, groups with a signal; default 8, RL's group size, for the cpu suite and 0 "
                         "for the gpu suite; 0: off)")
    bn.add_argument("--no-train", action="store_true",
                    help="train nothing: evaluate the runs of --out that have finished and write RESULTS.md from them "
                         "alone, marked as partial (what a bench still training, or stopped, has so far)")
    bn.add_argument("--ablations", action="store_true",
                    help="also train seed 0's ablations (no KL, no stop head, no decoder, no VAE, coherence weight 0, "
                         "longer RL, lower RL lr) and report them on the val split")
    bn.set_defaults(func=cmd_bench)

    qs = sub.add_parser("quickstart", help="the main job on the embedded default (synthetic data, tiny model, CPU)")
    qs.add_argument("--out", default="quickstart", help="output folder (default quickstart)")
    qs.add_argument("--seed", type=int, default=0, help="training seed of every job (default 0)")
    qs.add_argument("--scale", type=positive_float, default=1.0,
                    help="make every job SCALE times as long (a trial run; the protocol is 1, the default)")
    qs.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every job (repeatable)")
    qs.set_defaults(func=cmd_quickstart)

    cf = sub.add_parser("configs", help="list the packaged configs by tier, or copy one out for editing",
                        description="List the packaged configs by tier (ls, also with no COMMAND) or copy one out "
                                    "for editing (cp).")
    cf.set_defaults(func=cmd_configs_ls, tier=None)
    csub = cf.add_subparsers(dest="configs_command", metavar="[COMMAND]")
    ls = csub.add_parser("ls", help="list the packaged configs by tier (what `atp-latent configs` does)")
    ls.add_argument("tier", nargs="?", default=None, metavar="TIER",
                    help="only this tier (quickstart, bench, gpu, paper, accelerate)")
    ls.set_defaults(func=cmd_configs_ls)
    cp = csub.add_parser("cp", help="copy a packaged config out for editing; never over an existing file")
    cp.add_argument("config", metavar="TIER/NAME", help="the config, as `atp-latent configs` lists it, e.g. cpu/atp")
    cp.add_argument("dest", metavar="DEST", help="the new file, or a folder to copy it into under its own name")
    cp.set_defaults(func=cmd_configs_cp)
    return p


def _error(message: str) -> int:
    print(f"error: {message.splitlines()[0] if message.strip() else 'bad input'}", file=sys.stderr)
    return BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _error(str(e))
    args.argv = argv
    from atp_latent.progress import quiet_library_bars

    quiet_library_bars()  # outside a terminal: no Hugging Face bars in the logs (ours print short lines)
    from atp_latent.configtools import ConfigError
    from atp_latent.data.records import DataError

    try:
        return args.func(args)
    except UsageError as e:
        return _error(str(e))
    except (DataError, ConfigError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as e:
        if os.environ.get("ATP_DEBUG"):
            raise
        return _error(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
