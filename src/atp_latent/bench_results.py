"""RESULTS.md of a bench, rendered from its results.json: the accuracy table, the paired comparisons, RL against its
start, the rollouts, the diversity and the claims, each judged by a paired bootstrap over problems and seeds
(evaluation/stats.py). `python -m atp_latent.bench_results OUT` re-renders OUT/RESULTS.md without training or
evaluating anything again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from atp_latent.jobs import (
    DEFAULT_ROLLOUTS,
    DEFAULT_VAL_LARGE,
    JOB_DATA,
    LABELS,
    PAIRS,
    RL_FROM_ATP,
    STARTS,
    TEST_SPLITS,
    _label,
    in_display_order,
)


def gained_lost(row: dict, start: dict) -> tuple[int, int]:
    """Paired, problem by problem (evaluate_val rows with "correct"): how many `start` got wrong and `row` right,
    and the reverse."""
    from atp_latent.training.rl import compare_to_start

    gained, lost, _ = compare_to_start([c == "1" for c in start["correct"]], [c == "1" for c in row["correct"]])
    return gained, lost


def rollout_table(rows_per_seed: list[dict]) -> str:
    """Greedy accuracy beside RL's own sampling policy (evaluate_val rows with "rollout"), mean ± std over seeds."""
    from atp_latent.evaluation.evaluate import mean_std

    jobs = [j for j in rows_per_seed[0] if all("rollout" in r.get(j, {}) for r in rows_per_seed)]
    if not jobs:
        return ""
    n = rows_per_seed[0][jobs[0]]["rollout"]["n"]
    lines = [f"| model | greedy | rollouts: accuracy (pass@1) | pass@{n} | groups of {n} with a signal |",
             "|---|---|---|---|---|"]

    def cell(xs):
        m, sd = mean_std(xs)
        return f"{100 * m:.2f} ± {100 * sd:.2f}"

    for j in jobs:
        ro = [r[j]["rollout"] for r in rows_per_seed]
        lines.append(f"| {_label(j)} | {cell([r[j]['accuracy'] for r in rows_per_seed])} | "
                     f"{cell([x['accuracy'] for x in ro])} | {cell([x['pass_at_k'][str(n)] for x in ro])} | "
                     f"{cell([x['signal'] for x in ro])} |")
    return "\n".join(lines)


def rl_vs_start_table(val_rows: list[dict], digits: int = 1, *, split: str, held_out: bool) -> tuple[str, dict]:
    """Accuracy of each RL job against its SFT start (atp) on `split`, seed by seed (evaluate_val rows), with which
    problems each got right ("correct", per seed): the claim "RL improves on its start" holds when the paired
    bootstrap interval of the gain over problems and seeds lies above 0 (rl_gain_interval). `held_out`: no run
    selected anything on `split`. On the split RL's best/ was picked on (val) the start is best/'s first candidate,
    so the gain there cannot be negative: the table then gives no verdict. Returns the table and its summary
    (rl_vs_start_markdown renders one)."""
    from atp_latent.evaluation.evaluate import mean_std

    start = [r["atp"]["accuracy"] for r in val_rows if "atp" in r]
    s_mean, s_std = mean_std(start)
    summary = {"split": split, "held_out": held_out, "atp": {"per_seed": start, "mean": s_mean, "std": s_std}}
    if val_rows and all("correct" in r.get("atp", {}) for r in val_rows):
        summary["n_problems"] = len(val_rows[0]["atp"]["correct"])
        summary["atp"]["correct"] = [r["atp"]["correct"] for r in val_rows]
    for job in ("atp", *RL_FROM_ATP):
        if not all(job in r and "atp" in r for r in val_rows):
            continue
        accs = [r[job]["accuracy"] for r in val_rows]
        gains = [a - b for a, b in zip(accs, start)]
        m, sd = mean_std(accs)
        g, g_sd = mean_std(gains)
        summary[job] = {"per_seed": accs, "mean": m, "std": sd, "gains": gains, "mean_gain": g, "gain_std": g_sd}
        if all("correct" in r[job] and "correct" in r["atp"] for r in val_rows):
            summary[job]["gained_lost"] = [gained_lost(r[job], r["atp"]) for r in val_rows]
            summary[job]["correct"] = [r[job]["correct"] for r in val_rows]
        if job != "atp" and all("best_step" in r[job] for r in val_rows):
            summary[job]["best_steps"] = [r[job]["best_step"] for r in val_rows]
    return rl_vs_start_markdown(summary, digits), summary


def rl_vs_start_markdown(summary: dict, digits: int = 1) -> str:
    """rl_vs_start_table's table from its summary (also one read back from results.json, which may predate
    gain_std and the split fields: a summary without "held_out" is of val, where RL's best/ was picked)."""
    from atp_latent.evaluation.evaluate import mean_std
    from atp_latent.evaluation.report import interval_text, rl_gain_interval

    held_out = summary.get("held_out", False)
    lines = ["| model | acc per seed | mean ± std | gain over ATP SFT per seed | mean gain, 95% interval, p | "
             "interval above 0? | problems gained / lost per seed |", "|---|---|---|---|---|---|---|"]
    for job in ("atp", *RL_FROM_ATP):
        if job not in summary or "gains" not in summary[job]:
            continue
        row = summary[job]
        accs, gains = row["per_seed"], row["gains"]
        g = mean_std(gains)[0]
        res, _ = rl_gain_interval(summary, job)
        if job == "atp":
            interval = verdict = "-"
        elif res is None:
            interval, verdict = f"{100 * g:+.{digits}f} (no per-problem outcomes)", "-"
        else:
            interval = interval_text(res, digits)
            verdict = ("yes" if res.ci_low > 0 else "no") if held_out else "selection split"  # picked here: none
        flips = row.get("gained_lost")
        flip_text = "-" if flips is None or job == "atp" else ", ".join(f"+{a} / -{b}" for a, b in flips)
        f = f".{digits}f"  # points; 2 digits where one problem is worth less than 0.1
        lines.append(f"| {_label(job)} | " + ", ".join(f"{100 * a:{f}}" for a in accs) + f" | {100 * row['mean']:{f}}"
                     f" ± {100 * row['std']:{f}} | " + ", ".join(f"{100 * x:+{f}}" for x in gains) + f" | "
                     f"{interval} | {verdict} | {flip_text} |")
    steps = {job: summary[job]["best_steps"] for job in RL_FROM_ATP if summary.get(job, {}).get("best_steps")}
    if steps:
        lines.append("\nEach RL run's `best/` was saved at policy step " + "; ".join(
            f"{_label(j)}: {', '.join(map(str, s))}" for j, s in steps.items()) + " (per seed; 0: RL never beat its "
            "start on val, so that `best/` is the start itself and scores as it does).")
    return "\n".join(lines)


def picked_on_val(jobs) -> list[str]:
    """The RL jobs whose best/ was picked on the seed's val split with their start (atp) as first candidate."""
    return [j for j in jobs if STARTS.get(j) == "atp" and JOB_DATA.get(j, ("", "val.jsonl"))[1] == "val.jsonl"]


def ablation_table(rows: dict, picked_here=()) -> str:
    """Seed 0's models on val (evaluate_val rows); the jobs in `picked_here` (picked_on_val) are labelled: their
    best/ was picked on this split, so they cannot score below their start on it."""
    lines = ["| model (seed 0) | val acc, greedy | val acc, sampled latents | # tokens | latents | val acc (latents) by "
             "# steps |", "|---|---|---|---|---|---|"]
    for job, r in rows.items():
        label = _label(job) + (" (best/ picked on this split)" if job in picked_here else "")
        sampled = (f"{100 * r['sampled_accuracy']:.1f} ± {100 * r['sampled_accuracy_std']:.1f}"
                   if "sampled_accuracy" in r else "-")
        by = "; ".join(f"{k}: {100 * g['accuracy']:.1f} ({g['latents']:.2f})" for k, g in r.get("by_steps", {}).items())
        lines.append(f"| {label} | {100 * r['accuracy']:.1f} | {sampled} | {r['mean_tokens']:.1f} | "
                     f"{r['mean_latents']:.1f} | {by or '-'} |")
    return "\n".join(lines)


def gain_table(rows: dict, start: str = "atp") -> str:
    """Each model against `start` on the same problems (rows: evaluate_val's, with "correct"): accuracy, the gain,
    and the problems it gained (start wrong, it right) and lost."""
    base = rows[start]
    lines = ["| model (seed 0) | acc | gain over " + _label(start) + " | problems gained / lost |", "|---|---|---|---|"]
    for job, r in rows.items():
        gained, lost = gained_lost(r, base)
        gain = "-" if job == start else f"{100 * (r['accuracy'] - base['accuracy']):+.2f}"
        flips = "-" if job == start else f"+{gained} / -{lost}"
        lines.append(f"| {_label(job)} | {100 * r['accuracy']:.2f} | {gain} | {flips} |")
    return "\n".join(lines)


def _bench_settings(data: dict) -> tuple[str, int, int]:
    """The suite, held-out problems per seed and rollouts of a bench's results.json (older files name them only in
    their command line, which leaves out the suite's defaults)."""
    words = data["command"].split()

    def flag(name, default):
        return words[words.index(name) + 1] if name in words else default

    suite = data.get("suite", flag("--suite", "cpu"))
    val_large = data.get("val_large", int(flag("--val-large", DEFAULT_VAL_LARGE.get(suite, 0))))
    rollouts = data.get("rollouts", int(flag("--rollouts", DEFAULT_ROLLOUTS.get(suite, 0) if val_large else 0)))
    return suite, val_large, rollouts


def stopped_early(data: dict) -> str:
    from atp_latent.evaluation.report import stopped_early_text

    # a job's costs are its seeds' in order, from seed 0 (a claim row's run on more seeds than the others)
    costs = {f"{_label(j)} seed {k}": c for j, cs in data["costs"].items() for k, c in enumerate(cs)}
    costs |= {f"{_label(j)} seed 0": c for j, c in (data.get("ablation_costs") or {}).items()}
    return stopped_early_text(costs)


def seeds_text(data: dict) -> str:
    """"3 seed(s)", or with a regime's claim rows on more seeds, which rows got how many."""
    seeds, more = data["seeds"], data.get("claim_seeds") or data["seeds"]
    claims = [j for j in data.get("claim_jobs") or () if j in data["mean"]]
    if more <= seeds or not claims:
        return f"{seeds} seed(s)"
    return (f"{seeds} seed{'s' if seeds > 1 else ''}, {more} for the rows the claims compare ({', '.join(_label(j) for j in claims)}) and "
            "the runs they start from; a comparison pairs the seeds both of its rows ran")


def steps_table(data: dict, split: str = "test") -> str:
    """Accuracy on `split` by the problem's number of solution steps, mean ± std over each row's seeds, recounted
    from the per-problem outcomes; "" when results.json has no step counts (`steps_per_problem`, written by the
    bench) or a row has no per-problem outcomes."""
    from atp_latent.evaluation.evaluate import mean_std

    steps = (data.get("steps_per_problem") or {}).get(split)
    if not steps:
        return ""
    where = {k: [i for i, n in enumerate(steps) if n == k] for k in sorted(set(steps))}  # problems per step count
    head = " | ".join(f"{k} steps ({len(idx)})" for k, idx in where.items())
    lines = [f"| method | {head} |", "|---" * (len(where) + 1) + "|"]
    for job in data["mean"]:
        bits = [r[job][split].get("correct") for r in data["per_seed"] if job in r]
        if not bits or any(b is None or len(b) != len(steps) for b in bits):
            return ""
        cells = [mean_std([100 * sum(b[i] == "1" for i in idx) / len(idx) for b in bits]) for idx in where.values()]
        lines.append(f"| {_label(job)} | {' | '.join(f'{m:.1f} ± {sd:.1f}' for m, sd in cells)} |")
    return "\n".join(lines)


def bench_report(data: dict, took: str) -> tuple[str, dict]:
    """RESULTS.md (without the notes) from a bench's results.json, and the claim's facts. `took`: what the command
    cost, for the opening line. RL is judged against its start on the held-out problems (val_large) only; the val
    tables are labelled as the split RL's best/ was picked on."""
    from atp_latent.evaluation.report import claim_verdict, compute_summary, paired_table, results_table

    suite, val_large, rollouts = _bench_settings(data)
    data = data | {"mean": in_display_order(data["mean"]), "per_seed": [in_display_order(r) for r in data["per_seed"]]}
    if data.get("diversity"):
        data["diversity"] = in_display_order(data["diversity"])
    per_seed = data["per_seed"]
    table = results_table(data["mean"], per_seed, TEST_SPLITS, LABELS, data["costs"])
    by_steps = steps_table(data)
    paired = paired_table(per_seed, PAIRS, TEST_SPLITS, LABELS)
    val = {"held_out": False, "split": "val"} | data["rl_vs_start_val"] if data.get("rl_vs_start_val") else None
    large = data.get("rl_vs_start_val_large")
    large = {"held_out": True, "split": "val_large", "n_problems": val_large} | large if large else None
    where = f"{val_large} fresh in-distribution problems (`val_large`, held out: no run selected on them)"
    claim_text, claim = claim_verdict(per_seed, TEST_SPLITS, LABELS, rl_vs_start=large, where=where)
    rollouts_text = ""
    if data.get("rollouts_val_large") and large:
        ro = data["rollouts_val_large"]
        rollouts_text = rollout_table([{j: {"accuracy": large[j]["per_seed"][k], "rollout": ro[j][k]} for j in ro}
                                       for k in range(min(len(x) for x in ro.values()))])
        rollouts = ro[next(iter(ro))][0]["n"]
    regime = data.get("regime") or "default"
    title = f"{suite.upper()} benchmark" + ("" if regime == "default" else f", {regime} regime")
    text = (f"# {title}: every method on the synthetic benchmark\n\nCommand: `{data['command']}` "
            f"({took}). Compute: {compute_summary(data['costs'] | (data.get('ablation_costs') or {}))}. "
            "The analysis of these numbers is in NOTES.md beside this file.\n\n"
            f"Accuracy (%) per test split, mean ± std over {seeds_text(data)}; "
            f"# tokens = active latents + answer tokens (CoT: generated steps + answer); train steps and minutes: "
            f"each run's optimizer (RL: policy) steps and wall time, mean over seeds.\n\n{table}\n\n"
            + (f"Accuracy (%) on `test` by the problem's number of solution steps (problems of each in brackets), mean "
               f"± std over seeds:\n\n{by_steps}\n\n" if by_steps else "") +
            "Paired comparisons (same data, same start checkpoint): the accuracy difference in points over every "
            "problem of a split and every seed, its 95% interval from a bootstrap that resamples seeds and problems, "
            "and the two-sided p (docs/metrics.md); then each seed's difference. A difference is shown to hold only "
            f"when its interval excludes 0.\n\n{paired}\n\n"
            + ("RL against its SFT start on the val split (greedy). This is the selection split: each RL run's "
               "`best/` was picked on these problems with the start as its first candidate, so its gain here cannot "
               "be negative; shown for reference, it judges nothing (the verdict columns read \"selection split\")"
               f":\n\n{rl_vs_start_markdown(val)}\n\n" if val else "")
            + (f"The same on {val_large} fresh in-distribution problems (`data/val_large.jsonl` of each seed "
               "folder: drawn like val, in none of the splits, used for no checkpoint selection), where RL is "
               f"judged against its start (one problem = {100 / val_large:.2f} points; the gain's 95% interval from "
               "the paired bootstrap over problems and seeds must lie above 0):\n\n"
               f"{rl_vs_start_markdown(large, digits=2)}\n\n" if large else
               ("No held-out problems (`--val-large 0`), so RL is not judged against its start.\n\n" if not val_large
                else "No RL run with its start has finished yet, so RL is not judged against its start.\n\n"))
            + (f"RL's own sampling policy on the same problems: {rollouts} rollouts of each (sampled latents, "
               "sampled stop head, answer temperature 1.0, as in RL's groups), their accuracy, pass@k (at least one "
               f"of {rollouts} right), and the share of problems whose {rollouts} answers are neither all "
               "right nor all wrong (a GRPO group with a signal); mean ± std over seeds:\n\n"
               f"{rollouts_text}\n\n" if rollouts_text else "") +
            "## The claim: ATP-Latent (RL) beats SIM-CoT and Coconut at no more tokens, and RL beats its SFT start\n\n"
            f"{claim_text}\n\n"
            "Plots: `accuracy_vs_tokens.png`, `training_curves.png`, `latents_used.png`.\n")
    warning = stopped_early(data)
    if warning:
        text += f"\n{warning}\n"
    if data.get("diversity"):
        premise_text, claim["premise"] = diversity_report(data, large, where)
        text += "\n" + premise_text
    ablations, ablations_large = data.get("ablations_val"), data.get("ablations_val_large")
    if ablations:
        picked = picked_on_val(ablations)
        text += ("\n## Ablations (val split only, seed 0)\n\nSampled latents: z drawn from the VAE head's "
                 "N(mu, sigma) instead of z = mu, 3 draws. Last column: greedy val accuracy and mean latents per "
                 "number of solution steps. Every run's `best/` was picked on val; the RL rows marked \"best/ picked "
                 "on this split\" had their start as the first candidate there, so they cannot score below it on "
                 "those problems: RL against its start is judged on `val_large` (the next table) only.\n\n"
                 + ablation_table(ablations, picked) + "\n")
    if ablations_large:
        text += (f"\nSeed 0's RL runs on the {val_large} fresh in-distribution problems (`val_large`; every "
                 "RL run's checkpoint was picked on val, none on these), against their start:\n\n"
                 + gain_table(ablations_large) + "\n")
    return text, claim


def diversity_report(data: dict, large: dict | None, where: str) -> tuple[str, dict]:
    """The many-valid-plans sections of RESULTS.md: the diversity table and the four claims it tests, each judged by
    a paired bootstrap over problems and seeds (docs/metrics.md); and the claims' facts, {"a": ..., "b": ..., "c":
    ..., "d": ...}, each keyed by the row compared against (c: by the RL row)."""
    from atp_latent.evaluation.report import (
        beats_at_no_more_tokens,
        coverage_claim,
        diversity_table,
        ood_gap_claim,
        rl_over_start,
    )

    div, per_seed = data["diversity"], data["per_seed"]
    ran = {j for r in per_seed for j in r}

    def missing(jobs, present):  # why a claim has nothing to compare: the rows this bench has no results for
        gone = [_label(j) for j in jobs if j not in present]
        return f"no results for {', '.join(gone)} in this bench" if gone else "no seed ran both rows"

    k = next(iter(div.values()))[0]["n_rollouts"]
    a, a_facts = beats_at_no_more_tokens(per_seed, TEST_SPLITS, LABELS, "atp", ("coconut", "simcot"))
    b, b_facts = coverage_claim(div, LABELS, "atp", ("cot", "simcot"))
    c_judged = {j: rl_over_start(large, _label(j), j, "atp", where) for j in RL_FROM_ATP if large and j in large}
    c = [line for line, _ in c_judged.values()]
    d, d_facts = ood_gap_claim(per_seed, LABELS, "atp", tuple(j for j in ("cot", "coconut", "simcot") if j in ran))
    return (f"## Reasoning-path diversity on `test`\n\n{k} rollouts of every test problem per method and seed, under "
            "RL's rollout policy for every method (latents sampled from the VAE head where there is one, the stop "
            "head sampled, answer tokens at temperature 1.0: CoT varies in the steps it writes, Coconut and SIM-CoT "
            "only in their answers, since their latents are deterministic). A plan is CoT's written steps or the step "
            "decoder's reading of the latent groups (n/a: no readable plan); it is valid when it is one of the "
            "problem's valid step orders. Definitions: docs/metrics.md. Mean ± std over seeds; plot "
            f"`diversity.png`.\n\n{diversity_table(div, LABELS)}\n\n"
            "## The premise's claims in this regime\n\n(a) ATP SFT beats Coconut and SIM-CoT on accuracy at no more "
            "tokens:\n" + ("\n".join(a) or f"- not judged ({missing(('atp', 'coconut', 'simcot'), ran)})")
            + "\n\n(b) ATP's sampled plans are more diverse than CoT's and SIM-CoT's at equal validity:\n"
            + ("\n".join(b) or f"- not judged ({missing(('atp', 'cot', 'simcot'), div)})")
            + "\n\n(c) RL (the full reward; accuracy and format alone; the coherence reward alone) improves on its "
            "SFT start on problems no run selected on:\n"
            + ("\n".join(c) or ("- not judged (no held-out problems: `--val-large 0`)" if not _bench_settings(data)[1]
                                else "- not judged (no RL run from ATP SFT has finished)"))
            + "\n\n(d) ATP's OOD gap (test minus the three OOD splits) is smaller than the others':\n"
            + ("\n".join(d) or f"- not judged ({missing(('atp', 'cot', 'coconut', 'simcot'), ran)})") + "\n"), \
        {"a": a_facts, "b": b_facts, "c": {j: facts for j, (_, facts) in c_judged.items()}, "d": d_facts}


def write_report(out: Path | str) -> Path:
    """Re-write a bench's RESULTS.md from its results.json, without the runs (`python -m
    atp_latent.bench_results OUT`): nothing is trained or evaluated again. The claim's facts in results.json are decided
    again by today's rules; every measured number is kept."""
    out = Path(out)
    data = json.loads((out / "results.json").read_text())
    before = json.dumps(data, indent=2)
    # older files: label which RL-vs-start summary is of the split best/ was picked on
    for key, split, held_out in (("rl_vs_start_val", "val", False), ("rl_vs_start_val_large", "val_large", True)):
        if data.get(key):
            data[key] = {"split": split, "held_out": held_out} | data[key]
    text, data["claim"] = bench_report(data, "RESULTS.md re-written from results.json by `python -m "
                                             f"atp_latent.bench_results {out}`: no run trained or evaluated again")
    if json.dumps(data, indent=2) != before:
        (out / "results.json").write_text(json.dumps(data, indent=2))
    (out / "RESULTS.md").write_text(text)
    return out / "RESULTS.md"


if __name__ == "__main__":
    print(f"wrote {write_report(sys.argv[1])}")
