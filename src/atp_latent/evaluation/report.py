"""Tables and plots for `atp-latent bench`: mean +- std over seeds, paired comparisons with a bootstrap interval over
problems and seeds (evaluation/stats.py), accuracy against # tokens, training curves, and the distribution of
latents used.

A comparison "holds" only when the 95% interval of the paired difference excludes 0 (evaluation/stats.py); it needs
which problems each run got right ("correct": a 0/1 string per split, kept by the bench since 2026-12-03); a results
file without them gives no interval, and the comparison is "not judged"."""

from __future__ import annotations

import json
from pathlib import Path

from atp_latent.evaluation.evaluate import mean_std
from atp_latent.evaluation.stats import PairedBootstrapResult, paired_bootstrap
from atp_latent.modeling.methods import METHODS

METRICS = ("accuracy", "mean_tokens", "mean_latents", "mean_answer_tokens")


def with_jobs(per_seed: list[dict], *jobs: str) -> list[dict]:
    """The seeds' results that have every one of `jobs` (a regime's claim rows run on more seeds than the others:
    a comparison pairs the seeds both sides ran)."""
    return [r for r in per_seed if all(j in r for j in jobs)]


def aggregate(per_seed: list[dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
    """results[job][split][metric] over the seeds that ran the job -> mean and std (accuracy_std etc.) and "seeds"."""
    out: dict[str, dict[str, dict]] = {}
    for job in dict.fromkeys(j for r in per_seed for j in r):
        rows = with_jobs(per_seed, job)
        out[job] = {}
        for split in rows[0][job]:
            cell = {}
            for m in METRICS:
                mean, std = mean_std([r[job][split][m] for r in rows])
                cell[m], cell[f"{m}_std"] = mean, std
            cell["seeds"] = len(rows)
            out[job][split] = cell
    return out


def mean_over_splits(results: dict[str, dict], per_seed: list[dict], job: str, splits: list[str]) -> tuple[float, float]:
    """Mean accuracy over splits, its std over the seeds that ran the job."""
    vals = [sum(r[job][s]["accuracy"] for s in splits) / len(splits) for r in with_jobs(per_seed, job)]
    return mean_std(vals)


def run_cost(run: Path) -> dict:
    """What a finished run cost: optimizer (or RL) steps, wall minutes (summed over resumes), the step of its
    best validation accuracy, and whether the wall-clock safety stop cut it short of its scheduled steps, from
    its metrics.jsonl; and the commit it ran (environment.json)."""
    steps = minutes = best_step = scheduled = None
    best = -1.0
    path = Path(run) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        m = json.loads(line)
        if "train/finished" in m:
            steps, minutes, scheduled = m["step"], m.get("train/minutes"), m.get("train/scheduled_steps")
        if m.get("eval/val_accuracy", -1.0) > best:
            best, best_step = m["eval/val_accuracy"], m["step"]
    env = Path(run) / "environment.json"
    info = json.loads(env.read_text()) if env.is_file() else {}
    git, packages = info.get("git") or {}, info.get("packages") or {}
    versions = ", ".join(f"{k} {packages[k]}" for k in ("torch", "transformers") if packages.get(k)) or None
    hw = info.get("hardware") or {}
    hardware = hw.get("gpu") or (f"{hw['cpu']} ({hw.get('cpu_capability') or '?'})" if hw.get("cpu") else None)
    return {"steps": steps, "minutes": minutes, "best_step": best_step, "scheduled_steps": scheduled,
            "stopped_early": bool(scheduled and steps is not None and steps < scheduled),
            "commit": git.get("commit"), "dirty": git.get("dirty"), "versions": versions, "hardware": hardware}


def compute_summary(costs: dict[str, list[dict]]) -> str:
    """The compute a bench's runs took (the sum of their wall minutes, every job and seed) and the commit(s) they
    ran, from run_cost per job and seed."""
    every = [c for cs in costs.values() for c in (cs if isinstance(cs, list) else [cs])]
    minutes = sum(c.get("minutes") or 0.0 for c in every)
    commits = sorted({c["commit"][:7] + ("+dirty" if c.get("dirty") else "") for c in every if c.get("commit")})
    made = f"commit {', '.join(commits)}" if commits else "commit not recorded (runs from before 2026-12-03)"
    # a bench resumed elsewhere may have trained under other library versions or on another CPU (runs reproduce
    # on one host, not across hosts): say so, since its seeds are then not draws of one protocol
    unknown = sum(1 for c in every if not c.get("hardware"))  # runs from before the hardware was recorded
    made += _one_or_mixed(every, "versions", "", "trained under different library versions") \
        + _one_or_mixed(every, "hardware", "on ", "trained on different hardware",
                        f" ({unknown} runs from before the hardware was recorded)" if unknown else "")
    return (f"{len(every)} runs, {minutes / 60:.1f} h of training wall time in all (summed over jobs that ran side by "
            f"side), {made}")


def _one_or_mixed(costs: list[dict], key: str, prefix: str, mixed: str, single_note: str = "") -> str:
    """'; {prefix}{value}{single_note}' when the runs that recorded `key` share one value, '; **runs {mixed}**: '
    and every value when they differ, '' when none recorded it."""
    values = sorted({c[key] for c in costs if c.get(key)})
    if len(values) == 1:
        return f"; {prefix}{values[0]}{single_note}"
    return f"; **runs {mixed}**: {'; '.join(values)}" if values else ""


def stopped_early_note(runs: dict[str, Path]) -> str:
    """One line naming the runs (label -> run dir) the safety stop cut short, or '' when every run kept to its
    schedule: their rows are not the protocol's numbers."""
    return stopped_early_text({label: run_cost(run) for label, run in runs.items()})


def stopped_early_text(costs: dict[str, dict]) -> str:
    """stopped_early_note from the runs' run_cost (label -> cost), e.g. as kept in a bench's results.json."""
    cut = []
    for label, c in costs.items():
        if c.get("stopped_early"):
            cut.append(f"{label} ({c['steps']} of {c['scheduled_steps']} steps)")
    if not cut:
        return ""
    return ("**Warning: the wall-clock safety stop (train.max_minutes) cut " + ", ".join(cut) + " short of the "
            "schedule, so these rows are not the protocol's numbers (a busy or slow machine); re-run on a quieter "
            "machine or raise train.max_minutes.**")


def _mean_cost(costs: list[dict], key: str) -> str:
    vals = [c[key] for c in costs if c.get(key) is not None]
    return f"{sum(vals) / len(vals):.0f}" if vals else "-"


def results_table(agg: dict, per_seed: list[dict], splits: list[str], labels: dict[str, str],
                  costs: dict[str, list[dict]] | None = None) -> str:
    """Accuracy per split (mean ± std over seeds), token counts, and with `costs` (run_cost per seed) the
    training steps and wall minutes of each method's run (mean over seeds). A seeds column when the rows differ."""
    counts = {job: len(with_jobs(per_seed, job)) for job in agg}
    several = len(set(counts.values())) > 1
    extra = (" seeds |" if several else "") + (" train steps | train min |" if costs else "")
    head = "| method | " + " | ".join(splits) + " | mean acc | # tokens | latents | answer tokens |" + extra
    lines = [head, "|" + "---|" * (len(splits) + 5 + (2 if costs else 0) + several)]
    for job, per in agg.items():
        cells = [f"{100 * per[s]['accuracy']:.1f} ± {100 * per[s]['accuracy_std']:.1f}" for s in splits]
        m, sd = mean_over_splits(agg, per_seed, job, splits)
        avg = {k: sum(per[s][k] for s in splits) / len(splits) for k in METRICS}
        row = (f"| {labels.get(job, job)} | " + " | ".join(cells) + f" | {100 * m:.1f} ± {100 * sd:.1f} | "
               f"{avg['mean_tokens']:.1f} | {avg['mean_latents']:.1f} | {avg['mean_answer_tokens']:.1f} |")
        if several:
            row += f" {counts[job]} |"
        if costs:
            row += f" {_mean_cost(costs.get(job, []), 'steps')} | {_mean_cost(costs.get(job, []), 'minutes')} |"
        lines.append(row)
    return "\n".join(lines)


def outcomes(per_seed: list[dict], job: str, splits: list[str]) -> list[list[int]] | None:
    """Per seed, which problems `job` got right over `splits` (their files' order, one split after the other), or None
    when a seed's results lack them."""
    rows = []
    for r in per_seed:
        if job not in r or not all("correct" in r[job].get(s, {}) for s in splits):
            return None
        rows.append([int(c) for s in splits for c in r[job][s]["correct"]])
    return rows


def paired_interval(per_seed: list[dict], a: str, b: str, splits: list[str]) -> PairedBootstrapResult | None:
    """a - b over the problems of `splits` and the seeds, paired problem by problem and seed by seed (same data,
    same start; the seeds both ran): evaluation/stats.paired_bootstrap; None without per-problem outcomes."""
    per_seed = with_jobs(per_seed, a, b)
    if not per_seed:
        return None
    oa, ob = outcomes(per_seed, a, splits), outcomes(per_seed, b, splits)
    return paired_bootstrap(oa, ob) if oa is not None and ob is not None else None


def rl_gain_interval(summary: dict, job: str, start: str = "atp"):
    """(PairedBootstrapResult of `job` minus `start` over the summary's problems and seeds, a note) or (None, "").
    From each seed's per-problem outcomes ("correct"); a results file from before they were kept has only how many
    problems each seed gained and lost: each seed's per-problem differences are then rebuilt from those counts, in
    the same order on every seed (gained first, then lost), which can only widen the interval (the note says so)."""
    row, base = summary.get(job, {}), summary.get(start, {})
    if job == start or not row:
        return None, ""
    if row.get("correct") and base.get("correct"):
        return paired_bootstrap([[int(c) for c in x] for x in row["correct"]],
                                [[int(c) for c in x] for x in base["correct"]]), ""
    counts, n = row.get("gained_lost"), summary.get("n_problems")
    if not counts or not n:
        return None, ""
    a = [[1] * g + [0] * lost + [0] * (n - g - lost) for g, lost in counts]
    b = [[0] * g + [1] * lost + [0] * (n - g - lost) for g, lost in counts]
    return paired_bootstrap(a, b), ("; per-problem outcomes not kept in this results file: rebuilt from each seed's "
                                    "problems gained and lost, aligned across seeds, which can only widen the interval")


def interval_text(res: PairedBootstrapResult, digits: int = 1) -> str:
    """`+1.9 [-0.4, +4.3], p = 0.11` in points (p two-sided; 0 replicates on the far side: p < 1 / replicates)."""
    f = f"+.{digits}f"
    p = f"p = {res.p_value:.2g}" if res.p_value > 0 else f"p < {1 / res.n_replicates:.0e}"
    return f"{100 * res.mean_difference:{f}} [{100 * res.ci_low:{f}}, {100 * res.ci_high:{f}}], {p}"


def paired_comparison(per_seed: list[dict], a: str, b: str, split: str) -> dict:
    """Method a against method b on one split, seed by seed (same data, same start): the per-seed differences in
    accuracy, their mean and std, and on how many seeds a was strictly ahead."""
    diffs = [r[a][split]["accuracy"] - r[b][split]["accuracy"] for r in per_seed]
    mean, std = mean_std(diffs)
    return {"diffs": diffs, "mean": mean, "std": std, "wins": sum(d > 0 for d in diffs), "seeds": len(diffs)}


def paired_table(per_seed: list[dict], pairs: list[tuple[str, str]], splits: list[str], labels: dict) -> str:
    """One row per (a, b) pair: a - b in accuracy points per split and over every split's problems, with the 95%
    bootstrap interval over problems and seeds and its two-sided p; each seed's difference after it. Without
    per-problem outcomes: the seeds' mean ± std, marked as having no interval. Each pair over the seeds both ran."""
    lines = ["| comparison | " + " | ".join(splits) + " | all splits |", "|" + "---|" * (len(splits) + 2)]
    every = per_seed
    for a, b in pairs:
        per_seed = with_jobs(every, a, b)
        if not per_seed:
            continue
        cells = []
        for group in [[s] for s in splits] + [splits]:
            res = paired_interval(per_seed, a, b, group)
            per = ", ".join(f"{100 * sum(d[s]['accuracy'] - e[s]['accuracy'] for s in group) / len(group):+.1f}"
                            for d, e in ((r[a], r[b]) for r in per_seed))
            if res is not None:
                cells.append(f"{interval_text(res)} (seeds: {per})")
            else:
                c = [paired_comparison(per_seed, a, b, s) for s in group]
                mean = sum(x["mean"] for x in c) / len(c)
                std = mean_std([sum(x["diffs"][k] for x in c) / len(c) for k in range(len(per_seed))])[1]
                cells.append(f"{100 * mean:+.1f} ± {100 * std:.1f} (seeds: {per}; no per-problem outcomes: no interval)")
        lines.append(f"| {labels.get(a, a)} − {labels.get(b, b)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claim_verdict(per_seed: list[dict], splits: list[str], labels: dict, method: str = "atp_rl",
                  baselines: tuple[str, ...] = ("simcot", "coconut"), start: str = "atp",
                  rl_vs_start: dict | None = None, where: str = "") -> tuple[str, dict]:
    """The paper's claim, tested on these numbers: `method` beats each baseline at no more tokens, and RL beats
    its SFT start. "Beats a baseline": the 95% bootstrap interval of the accuracy difference over every problem of
    `splits` and every seed (paired: same data, same CoT start; evaluation/stats.py) lies above 0, with no more
    tokens on average; without per-problem outcomes it is not judged.

    "Beats its start" is judged on held-out problems only (`rl_vs_start`: suite.rl_vs_start_table's summary of a
    split no run selected on, described by `where`): RL's best/ is picked on val with the start as its first
    candidate, so on val the gain cannot be negative. The same bar: the interval of the paired gain over problems
    and seeds (rl_gain_interval) lies above 0. A part that is not judged leaves the claim as a whole not
    decided (facts["holds"] None) unless another part fails. Returns markdown lines and the facts."""
    lines, facts = beats_at_no_more_tokens(per_seed, splits, labels, method, baselines)
    rl_line, rl_facts = rl_over_start(rl_vs_start, labels.get(method, method), method, start, where)
    lines.append(rl_line)
    if rl_facts is not None:
        facts["rl_over_start"] = rl_facts
    judged = [f["holds"] for f in facts.values()]
    if any(h is False for h in judged):
        facts["holds"] = False
    else:  # no judged part fails: the claim holds when every part was judged
        facts["holds"] = True if rl_facts is not None and all(h is True for h in judged) else None
    word = {True: "holds", False: "does not hold", None: "not decided"}[facts["holds"]]
    head = f"The claim as a whole: **{word}** here" + (
        " (a part of it was not judged)." if facts["holds"] is None else ".")
    return "\n".join([head, "", *lines]), facts


def beats_at_no_more_tokens(per_seed: list[dict], splits: list[str], labels: dict, method: str,
                            baselines: tuple[str, ...]) -> tuple[list[str], dict]:
    """claim_verdict's lines on `method` against each baseline that ran (the bootstrap interval of the accuracy
    difference over every problem of `splits` and every seed above 0, at no more tokens), and their facts."""
    def over_splits(r, job, key):
        return sum(r[job][s][key] for s in splits) / len(splits)

    facts, lines, every = {}, [], per_seed
    for b in baselines:
        per_seed = with_jobs(every, method, b)
        if not per_seed:
            continue
        diffs = [over_splits(r, method, "accuracy") - over_splits(r, b, "accuracy") for r in per_seed]
        tok_a = sum(over_splits(r, method, "mean_tokens") for r in per_seed) / len(per_seed)
        tok_b = sum(over_splits(r, b, "mean_tokens") for r in per_seed) / len(per_seed)
        res = paired_interval(per_seed, method, b, splits)
        holds = None if res is None else bool(res.ci_low > 0 and tok_a <= tok_b)
        facts[b] = {"diffs": diffs, "tokens": tok_a, "baseline_tokens": tok_b, "holds": holds,
                    "interval": res.as_dict() if res is not None else None}
        verdict = {True: "holds", False: "does not hold", None: "not judged"}[holds]
        shown = (f"in points, paired over every problem and seed, with its 95% interval: {interval_text(res)}"
                 if res is not None else "no per-problem outcomes in this results file, so no interval")
        lines.append(f"- {labels.get(method, method)} beats {labels.get(b, b)} at no more tokens: "
                     f"**{verdict}** (accuracy over the test splits, {shown}; per seed "
                     f"{', '.join(f'{100 * d:+.1f}' for d in diffs)}; # tokens {tok_a:.1f} vs {tok_b:.1f})")
    return lines, facts


def rl_over_start(summary: dict | None, label: str, method: str, start: str, where: str) -> tuple[str, dict | None]:
    """claim_verdict's line on RL against its start, and its facts (None: not judged): the paired bootstrap interval
    of the gain over the held-out problems and the seeds (rl_gain_interval) must lie above 0."""

    if summary is None or method not in summary or start not in summary:
        return (f"- {label} beats its SFT start: **not judged** (it and its start have no results on held-out "
                "problems: RL's `best/` was picked on "
                "val, so val cannot judge it; `--val-large N` draws N that no run selects on)"), None
    if not summary.get("held_out"):
        raise ValueError(f"RL against its start is judged on held-out problems only, not on {summary.get('split')!r}, "
                         "where RL's best/ was picked")
    res, how = rl_gain_interval(summary, method, start)
    if res is None:
        return f"- {label} beats its SFT start: **not judged** (no per-problem results)", None
    facts = {"split": summary.get("split"), "mean_gain": res.mean_difference, "interval": res.as_dict(),
             "holds": bool(res.ci_low > 0)}
    verdict = "holds" if facts["holds"] else "does not hold"
    steps = summary[method].get("best_steps") or []
    never = "" if not steps or any(steps) else ("; on every seed its `best/` is the start itself: RL never beat it "
                                                "on val")
    return (f"- {label} beats its SFT start on {where}: **{verdict}** (gain in points, paired over every problem and "
            f"seed, with its 95% interval: {interval_text(res, 2)}{how}{never})"), facts


def method_colours(jobs) -> dict:
    """One colour per method, none shared up to 20 methods (tab20: its dark shades first, then the light ones), so
    a bench's rows keep their colour across plots."""
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab20").colors
    return {job: palette[(2 * i) % 20 + (2 * i) // 20 % 2] for i, job in enumerate(jobs)}


def plot_accuracy_vs_tokens(agg: dict, per_seed: list[dict], splits: list[str], labels: dict, path: Path) -> None:
    """Mean accuracy over the splits (error bar: std over seeds) against # tokens on a log axis with plain tick
    labels, one colour per method, the legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    longest = max((len(labels.get(job, job)) for job in agg), default=10)
    fig, ax = plt.subplots(figsize=(6 + 0.075 * longest, 4.5))  # the axes keep about 6 inches beside the legend
    colours = method_colours(agg)
    tokens = []
    for job, per in agg.items():
        m, sd = mean_over_splits(agg, per_seed, job, splits)
        tok = sum(per[s]["mean_tokens"] for s in splits) / len(splits)
        tokens.append(tok)
        ax.errorbar(tok, 100 * m, yerr=100 * sd, fmt="o", capsize=3, color=colours[job], label=labels.get(job, job))
    ax.set_xscale("log")
    lo, hi = min(tokens, default=1) / 1.2, max(tokens, default=1) * 1.2
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if lo <= t <= hi]
    if ticks:
        ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("# tokens (active latents + answer tokens; CoT: generated tokens)")
    ax.set_ylabel("mean accuracy over test splits (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(run_dirs: dict[str, list[Path]], labels: dict, path: Path) -> None:
    """train/loss (SFT) or train/reward (RL) per step, and val accuracy (dashed, right axis); one panel per
    method, one colour per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = list(run_dirs)
    cols = 4
    rows = (len(jobs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, job in zip(axes.flat, jobs):
        val_ax = ax.twinx()  # validation accuracy (dashed) on the right axis
        for seed, run in enumerate(run_dirs[job]):
            path_m = run / "metrics.jsonl"
            if not path_m.is_file():
                continue
            rows_m = [json.loads(line) for line in path_m.read_text().splitlines() if line.strip()]
            key = "train/reward" if any("train/reward" in r for r in rows_m) else "train/loss"
            pts = [(r["step"], r[key]) for r in rows_m if key in r]
            if pts:
                line = ax.plot(*zip(*pts), lw=0.8, alpha=0.7, label=f"seed {seed}")[0]
                val = [(r["step"], 100 * r["eval/val_accuracy"]) for r in rows_m if "eval/val_accuracy" in r]
                if val:
                    val_ax.plot(*zip(*val), ls="--", lw=1.2, color=line.get_color())
            ax.set_ylabel(key)
        val_ax.set_ylabel("val accuracy (%), dashed", fontsize=8)
        ax.set_title(labels.get(job, job), fontsize=9)
        ax.set_xlabel("step")
        if job in METHODS:  # a method's own job (SFT loss); RL and ablation jobs keep a linear axis
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(jobs):]:
        ax.axis("off")
    # one legend for the seeds' colours: in a spare panel when there is one, else below the panels
    handles, names = max((ax.get_legend_handles_labels() for ax in list(axes.flat)[:len(jobs)]),
                         key=lambda hl: len(hl[0]), default=([], []))
    spare = list(axes.flat)[len(jobs):]
    if handles and spare:
        spare[0].legend(handles, names, loc="center", title="solid: train, dashed: val accuracy")
    elif handles:
        fig.legend(handles, names, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if handles and not spare else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latents(latents: dict[str, list[int]], labels: dict, path: Path) -> None:
    """How many latents each method used per problem: one row per method (those that use any), one column per
    count, the cell's shade and number the share of problems, the row's mean on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [j for j, v in latents.items() if v and max(v) > 0]
    top = max((max(latents[j]) for j in jobs), default=0)
    shares = [[latents[j].count(n) / len(latents[j]) for n in range(top + 1)] for j in jobs]
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.35 * (top + 1), 16), 1 + 0.4 * max(len(jobs), 1)))
    if jobs:
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for row, line in enumerate(shares):
            for n, share in enumerate(line):
                if share >= 0.005:
                    ax.text(n, row, f"{100 * share:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if share > 0.6 else "black")
            mean = sum(latents[jobs[row]]) / len(latents[jobs[row]])
            ax.text(top + 0.7, row, f"mean {mean:.1f}", va="center", fontsize=8)
        ax.set_yticks(range(len(jobs)), [labels.get(j, j) for j in jobs], fontsize=8)
        ax.set_xticks(range(0, top + 1, 1 if top <= 20 else 5))
    ax.set_xlabel("latents used per problem (test splits); cells: % of problems")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----- the many-valid-plans regime: reasoning-path diversity and its claims -----

def diversity_table(div: dict[str, list[dict]], labels: dict) -> str:
    """Per method (div[job]: one suite.diversity_curves summary per seed), mean ± std over seeds of plan validity,
    its breakdown, coverage, distinct right orders, order entropy, Kendall distance, and pass@1 / pass@K / strict
    pass@K; "n/a" for a method without a readable plan."""
    def cell(xs, pct=True):
        if any(x is None for x in xs):
            return "n/a"
        m, sd = mean_std([100 * x if pct else x for x in xs])
        return f"{m:.1f} ± {sd:.1f}" if pct else f"{m:.3f} ± {sd:.3f}"

    first = next(iter(div.values()))[0]
    k = str(first["n_rollouts"])
    lines = [f"| method | plan valid | valid, right | valid, wrong | invalid | coverage | distinct right orders | "
             f"order entropy | Kendall distance | pass@1 | pass@{k} | strict pass@{k} |", "|" + "---|" * 12]
    for job, seeds in div.items():
        def get(key, sub=None, seeds=seeds):
            return [(s.get(key) or {}).get(sub) if sub else s.get(key) for s in seeds]
        lines.append(f"| {labels.get(job, job)} | {cell(get('plan_validity'))} | {cell(get('valid_and_correct'))} | "
                     f"{cell(get('valid_but_wrong'))} | {cell(get('invalid_plan'))} | {cell(get('coverage'), False)} | "
                     f"{cell(get('distinct_correct_orders'), False)} | {cell(get('order_entropy'), False)} | "
                     f"{cell(get('kendall_distance'), False)} | {cell(get('pass_at_k', '1'))} | "
                     f"{cell(get('pass_at_k', k))} | {cell(get('strict_pass_at_k', k))} |")
    return "\n".join(lines)


def coverage_claim(div: dict[str, list[dict]], labels: dict, method: str = "atp",
                   others: tuple[str, ...] = ("cot", "simcot")) -> tuple[list[str], dict]:
    """"`method`'s sampled plans cover more valid orders than each other method's at equal validity": per problem
    and seed, coverage paired by the bootstrap (its interval above 0), and plan validity not lower (its interval
    not below 0). Returns markdown lines and facts."""
    from atp_latent.evaluation.stats import paired_bootstrap

    lines, facts = [], {}
    for o in others:
        if method not in div or o not in div:
            continue
        a, b = paired_seeds(div[method], div[o])
        if not a:
            continue
        if not all("per_problem" in s for s in a + b):
            lines.append(f"- {labels.get(method, method)}'s plans cover more valid orders than "
                         f"{labels.get(o, o)}'s: **not judged** (one of them has no readable plan)")
            facts[o] = {"holds": None}
            continue
        cov = paired_bootstrap([s["per_problem"]["coverage"] for s in a], [s["per_problem"]["coverage"] for s in b])
        val = paired_bootstrap([s["per_problem"]["validity"] for s in a], [s["per_problem"]["validity"] for s in b])
        holds = bool(cov.ci_low > 0 and val.ci_high >= 0)
        facts[o] = {"coverage": cov.as_dict(), "validity": val.as_dict(), "holds": holds}
        lines.append(f"- {labels.get(method, method)}'s plans cover more valid orders than {labels.get(o, o)}'s at no "
                     f"lower validity: **{'holds' if holds else 'does not hold'}** (coverage difference x 100: "
                     f"{interval_text(cov)}; plan validity difference, points: {interval_text(val)})")
    return lines, facts


def ood_gap_claim(per_seed: list[dict], labels: dict, method: str = "atp", others: tuple[str, ...] = (),
                  in_split: str = "test", ood: tuple[str, ...] = ("test_large", "test_long", "test_perturbed")
                  ) -> tuple[list[str], dict]:
    """"`method`'s OOD gap (in-distribution minus OOD accuracy) is smaller than each other method's": the difference
    of gaps by stats.paired_gap_bootstrap (seeds shared, each problem set resampled on its own), its interval below
    0. Beside it, the paired OOD accuracy difference: a gap that holds as smaller while OOD accuracy is not shown
    higher is smaller only because in-distribution accuracy is lower, and the line says so. Needs per-problem
    outcomes."""
    from atp_latent.evaluation.stats import paired_bootstrap, paired_gap_bootstrap

    lines, facts, every = [], {}, per_seed
    for o in others:
        per_seed = with_jobs(every, method, o)
        if not per_seed:
            continue
        pieces = [outcomes(per_seed, j, s) for j, s in ((method, [in_split]), (o, [in_split]), (method, list(ood)),
                                                         (o, list(ood)))]
        if any(p is None for p in pieces):
            continue
        res = paired_gap_bootstrap(*pieces)
        holds = bool(res.ci_high < 0)
        # what the gaps are made of: a gap shrinks when OOD accuracy rises or when in-distribution accuracy falls
        acc = [100 * sum(map(sum, p)) / sum(map(len, p)) for p in pieces]
        parts = {"in": {"method": acc[0], "other": acc[1]}, "ood": {"method": acc[2], "other": acc[3]}}
        ood_diff = paired_bootstrap(pieces[2], pieces[3])
        facts[o] = {"interval": res.as_dict(), "holds": holds, "accuracy": parts, "ood_difference": ood_diff.as_dict()}
        lines.append(f"- {labels.get(method, method)}'s OOD gap is smaller than {labels.get(o, o)}'s: "
                     f"**{'holds' if holds else 'does not hold'}** (its gap minus the other's, points: "
                     f"{interval_text(res)}; gaps {acc[0] - acc[2]:.1f} and {acc[1] - acc[3]:.1f}: `{in_split}` "
                     f"{acc[0]:.1f} and {acc[1]:.1f}, OOD {acc[2]:.1f} and {acc[3]:.1f}; OOD accuracy difference, "
                     f"points: {interval_text(ood_diff)})"
                     + (f". The gap is smaller only because {labels.get(method, method)}'s `{in_split}` accuracy is "
                        f"lower: its OOD accuracy is not shown higher." if holds and ood_diff.ci_low <= 0 else ""))
    return lines, facts


def paired_seeds(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
    """Two methods' per-seed diversity summaries restricted to the seeds both ran, in the same order (each summary
    names its "seed"; summaries without one are taken as seeds 0, 1, ... in order)."""
    by_a = {s.get("seed", k): s for k, s in enumerate(a)}
    by_b = {s.get("seed", k): s for k, s in enumerate(b)}
    both = [k for k in by_a if k in by_b]
    return [by_a[k] for k in both], [by_b[k] for k in both]


def plot_diversity(div: dict[str, list[dict]], labels: dict, path: Path) -> None:
    """Coverage and pass@k against the number of sampled rollouts K (mean over seeds), one colour per method, the
    same in both panels; the strict pass@k (a rollout counts only when its plan is valid too) dashed in the same
    colour, where there is a plan. One legend for both, beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    colours = method_colours(div)
    all_ks: set[int] = set()
    for job, seeds in div.items():
        ks = sorted(int(k) for k in seeds[0]["pass_at_k"])
        all_ks.update(ks)
        passk = [sum(s["pass_at_k"][str(k)] for s in seeds) / len(seeds) for k in ks]
        axes[1].plot(ks, [100 * v for v in passk], marker="o", color=colours[job], label=labels.get(job, job))
        if seeds[0].get("strict_pass_at_k"):
            strict = [sum(s["strict_pass_at_k"][str(k)] for s in seeds) / len(seeds) for k in ks]
            axes[1].plot(ks, [100 * v for v in strict], linestyle="--", color=colours[job])
        if seeds[0].get("coverage_at_k"):
            cov = [sum(s["coverage_at_k"][str(k)] for s in seeds) / len(seeds) for k in ks]
            axes[0].plot(ks, cov, marker="o", color=colours[job])
    axes[0].set(xlabel="K rollouts", ylabel="coverage of valid orders", title="plan coverage (methods with a plan)")
    axes[1].set(xlabel="K rollouts", ylabel="pass@K (%)", title="pass@K (dashed: strict, plan valid too)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_ks), [str(k) for k in sorted(all_ks)])
        ax.minorticks_off()
    fig.legend(*axes[1].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.8, 0.5), fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
