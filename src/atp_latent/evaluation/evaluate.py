"""The evaluation harness shared by every method: batched, KV-cached, on the latent engine (METHOD.md §9)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from atp_latent.data.records import Problem
from atp_latent.data.sequences import SequenceBuilder, left_pad
from atp_latent.evaluation.answers import answers_match, extract_answer
from atp_latent.modeling.methods import get_method
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.modeling.tokenizer import END_LATENT
from atp_latent.progress import progress_bar


@dataclass
class EvalSummary:
    accuracy: float
    n: int
    mean_tokens: float  # "# tokens": active latents + answer tokens
    mean_latents: float
    mean_answer_tokens: float
    format_rate: float  # share with a parseable "### answer"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@torch.no_grad()
def evaluate(
    reasoner: LatentReasoner,
    builder: SequenceBuilder,
    problems: list[Problem],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    sample_latents: bool = False,
    stop_mode: str = "greedy",
    temperature: float = 0.0,
    latent_temperature: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "eval",
    plans: bool = False,
) -> tuple[EvalSummary, list[dict]]:
    """Answers for `problems`; returns the summary and one row per problem (in input order).

    Greedy by default (z = mu, the stop head's argmax, argmax tokens). `sample_latents`, `stop_mode="sample"` and
    `temperature` > 0 sample each part instead; all three together are RL's rollout policy (METHOD.md §8), whose
    latents come from N(mu, (k sigma)^2) with k = `latent_temperature` (RL's `rl.latent_temperature`).
    `plans`: each row also gets "plan", the steps its reasoning reads as (evaluation/plans.py; None where the method
    has no readable plan)."""
    reasoner.eval()
    tok = builder.tok
    prompts = [builder.eval_prompt(p.question) for p in problems]
    # Sort by prompt length so each batch pads little; rows are put back in order at the end.
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i][0]))
    gen = torch.Generator(device=device).manual_seed(seed)
    rows: list[dict | None] = [None] * len(problems)
    bar = progress_bar(total=len(problems), desc=desc, disable=not progress, leave=False)
    correct = 0
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        ids, mask = left_pad([prompts[i][0] for i in idx], tok.pad_token_id)
        n_slots = torch.tensor([prompts[i][1] for i in idx])
        state, out = reasoner.answer(
            ids.to(device), mask.to(device), n_slots.to(device), builder.end_id, tok.eos_token_id,
            tok.pad_token_id, max_new_tokens, sample_latents=sample_latents, stop_mode=stop_mode,
            temperature=temperature, generator=gen, latent_temperature=latent_temperature,
        )
        n_active = state.n_active.tolist() if state.active.numel() else [0] * len(idx)
        texts = [tok.decode(out.tokens[j, : int(out.lengths[j])].tolist(), skip_special_tokens=False)
                 for j in range(len(idx))]
        read = None
        if plans:
            from atp_latent.evaluation.plans import read_plans

            read = read_plans(reasoner, state, texts, tok)
        for j, i in enumerate(idx):
            n_ans = int(out.lengths[j])
            text = texts[j]
            pred = extract_answer(END_LATENT + text)
            ok = answers_match(pred, problems[i].answer)
            correct += ok
            rows[i] = {"id": problems[i].id, "question": problems[i].question, "gold": problems[i].answer,
                       "output": text, "pred": pred, "correct": bool(ok), "latents": int(n_active[j]),
                       "answer_tokens": n_ans, "steps": len(problems[i].steps)}
            if read is not None:
                rows[i]["plan"] = read[j]
        bar.update(len(idx))
        bar.set_postfix(acc=f"{correct / min(start + batch_size, len(order)):.3f}")
    bar.close()
    done = [r for r in rows if r is not None]
    return summarize(done), done


def summarize(rows: list[dict]) -> EvalSummary:
    """Accuracy and token counts from per-problem rows (also used after gathering shards)."""
    n = max(len(rows), 1)
    return EvalSummary(
        accuracy=sum(r["correct"] for r in rows) / n,
        n=len(rows),
        mean_tokens=sum(r["latents"] + r["answer_tokens"] for r in rows) / n,
        mean_latents=sum(r["latents"] for r in rows) / n,
        mean_answer_tokens=sum(r["answer_tokens"] for r in rows) / n,
        format_rate=sum(bool(r["pred"]) for r in rows) / n,
    )


def accuracy_by_steps(per_sample_rows: list[list[dict]]) -> dict[str, dict]:
    """Accuracy and mean latents by the problem's number of labelled solution steps ("steps" of each row), pooled
    over the samples: {"3": {"accuracy": ..., "mean_latents": ..., "problems": ...}, ...} in step order. Problems
    without step labels are left out ({} for a file that has none)."""
    rows = [r for sample in per_sample_rows for r in sample if r.get("steps")]
    out = {}
    for k in sorted({r["steps"] for r in rows}):
        group = [r for r in rows if r["steps"] == k]
        out[str(k)] = {"accuracy": sum(r["correct"] for r in group) / len(group),
                       "mean_latents": sum(r["latents"] for r in group) / len(group),
                       "problems": len(group) // len(per_sample_rows)}
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of k samples is right, from c right out of n >= k
    samples of one problem: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), as a product to stay exact for large n."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
        miss *= 1.0 - k / i
    return 1.0 - miss


def right_counts(per_sample_rows: list[list[dict]]) -> list[int]:
    """How many of n evaluations of the same problems got each one right (per_sample_rows[s][i]: sample s of
    problem i)."""
    return [sum(rows[i]["correct"] for rows in per_sample_rows) for i in range(len(per_sample_rows[0]))]


def pass_at_ks(counts: list[int], n: int) -> dict[str, float]:
    """pass@k for k = 1, 2, 4, ... and n, averaged over problems, from each problem's right answers out of n."""
    ks = sorted({2 ** j for j in range(n.bit_length()) if 2 ** j <= n} | {n})
    return {str(k): sum(pass_at_k(n, c, k) for c in counts) / max(len(counts), 1) for k in ks}


def rollout_policy(temperature: float | None = None, latent_temperature: float | None = None) -> dict:
    """evaluate()'s arguments that sample as RL's rollouts do: z ~ N(mu, (k sigma)^2), the stop head sampled, answer
    tokens at `temperature` (defaults: RL's, k = 1)."""
    from atp_latent.config import RLConfig

    rl = RLConfig()
    return dict(sample_latents=True, stop_mode="sample",
                temperature=rl.temperature if temperature is None else temperature,
                latent_temperature=rl.latent_temperature if latent_temperature is None else latent_temperature)


def default_max_new_tokens(method: str) -> int:
    """16 answer tokens for latent methods and No-CoT (METHOD.md §9); 160 where the answer also writes the
    steps (MethodDef.long_answers: CoT), the defaults of eval.max_new_tokens and eval.cot_max_new_tokens."""
    return 160 if get_method(method).long_answers else 16


def load_for_eval(run_or_checkpoint, device="cpu"):
    """A run directory (its best/ or final/ weights) or a checkpoint -> (reasoner, tokenizer, builder)."""
    from atp_latent.data.sequences import builder_for
    from atp_latent.training.runs import checkpoint_weights

    model, tok = LatentReasoner.from_pretrained(checkpoint_weights(run_or_checkpoint))
    model.to(device).eval()
    return model, tok, builder_for(tok, model.spec)


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def markdown_table(results: dict[str, dict[str, dict]], splits: list[str], methods: dict[str, str] | None = None) -> str:
    """results[method][split] = summary dict (accuracy, mean_tokens, ...; optional accuracy_std). With `methods`
    the rows are runs: results[run][split], and a method column shows methods[run] beside each run's name."""
    head = ("| run | method | " if methods is not None else "| method | ") + " | ".join(splits) \
        + " | mean acc | # tokens | latents | answer tokens |"
    lines = [head, "|" + "---|" * (len(splits) + 5 + (methods is not None))]
    for method, per in results.items():
        cells = []
        for s in splits:
            r = per.get(s)
            if r is None:
                cells.append("-")
            elif r.get("accuracy_std"):
                cells.append(f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f}")
            else:
                cells.append(f"{100 * r['accuracy']:.1f}")
        present = [per[s] for s in splits if s in per]
        if not present:
            continue
        mean_acc = sum(r["accuracy"] for r in present) / len(present)
        tok = sum(r["mean_tokens"] for r in present) / len(present)
        lat = sum(r["mean_latents"] for r in present) / len(present)
        ans = sum(r["mean_answer_tokens"] for r in present) / len(present)
        name = f"{method} | {methods.get(method, '-')}" if methods is not None else method
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * mean_acc:.1f} | {tok:.1f} | {lat:.1f} | {ans:.1f} |")
    return "\n".join(lines)
