"""GRPO on the latent policy (METHOD.md §8), on the shared latent engine.

Per RL step: B questions x G rollouts (sampled latents, sampled stops, sampled answer tokens), rewards
(accuracy, format, coherence of the decoded steps), group-normalised advantages, then one pass over the
shuffled buffer in minibatches with the clipped surrogate on three log-prob streams (latents, stop,
answer). The step decoder is frozen; the base model and both heads train. As in the paper, no KL penalty by
default (rl.kl_coef > 0 adds one to the frozen start policy, scored under the same autocast as the policy).
A method's RL (methods/: MethodDef.rl_name, e.g. atp-rl, colar-rl) runs this loop on that method's checkpoints;
what differs is the reasoner's own (a CoLaR reasoner's LM head stops: its stop is the answer's first token and its
"continue" decisions are not scored) and its config (rewards, minibatch, latent log-ratio).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import AutoModelForCausalLM

from atp_latent.config import RunConfig
from atp_latent.data.records import Problem
from atp_latent.data.sequences import SequenceBuilder, builder_for, left_pad
from atp_latent.evaluation.answers import extract_answer
from atp_latent.evaluation.plans import decode_plans
from atp_latent.modeling.heads import gaussian_log_density
from atp_latent.modeling.lora import add_lora_to_reasoner
from atp_latent.modeling.methods import RL_METHODS, get_method
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.modeling.tokenizer import END_LATENT
from atp_latent.progress import progress_bar
from atp_latent.training.guards import NonFiniteGuard, first_nonfinite_grad
from atp_latent.training.rewards import (
    RewardWeights,
    accuracy_reward,
    coherence_matters,
    coherence_reward,
    format_reward,
    total_reward,
)
from atp_latent.training.runs import (
    check_resume_budget,
    checkpoint_weights,
    save_training_checkpoint,
)
from atp_latent.training.sft import (
    DTYPES,
    finish_run,
    open_run_dir,
    prepare_run,
    validate,
    warmup_then_decay,
)


def reward_weights(cfg: RunConfig) -> RewardWeights:
    r = cfg.rl
    only = r.reward == "coherence_only"
    return RewardWeights(
        accuracy=r.w_acc if r.w_acc is not None else (0.0 if only else 1.0),
        format=r.w_fmt if r.w_fmt is not None else 0.5,
        coherence=r.w_coh if r.w_coh is not None else (1.0 if only else 0.1),
    )


# Rewards are sums of a few weighted terms; members whose rewards differ by less than this are equal.
EQUAL_REWARD_TOL = 1e-6


def equal_reward_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[n_groups] bool: every member of the group earned the same reward (no learning signal)."""
    r = rewards.double().view(-1, group_size)
    return (r.max(-1).values - r.min(-1).values) <= EQUAL_REWARD_TOL


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """A_i = (r_i - mean_group) / (std_group + 1e-8), in float64; a group with equal rewards gets exact zeros.

    In float32, 8 equal rewards such as 1.6 need not sum exactly, so the mean is one ulp off, the std ~1e-7,
    and the quotient +-0.87 for every member: equal groups are detected by their spread instead."""
    r = rewards.double().view(-1, group_size)
    adv = (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-8)
    adv = torch.where(equal_reward_groups(rewards, group_size)[:, None], torch.zeros_like(adv), adv)
    return adv.flatten().to(torch.float32)


def masked_mean(per: torch.Tensor, mask: torch.Tensor, norm: str = "sequence",
                tokens: torch.Tensor | None = None) -> torch.Tensor:
    """sequence: masked mean per row, then mean over rows (rows without positions count 0); token: one mean over
    every masked position of the batch, dividing by `tokens` when given (the positions per process of the global
    minibatch, see `token_denominators`). A 1-D input has one position per row."""
    maskf = mask.float()
    if norm == "token":
        return (per * maskf).sum() / (tokens if tokens is not None else maskf.sum()).clamp(min=1)
    dims = tuple(range(1, per.dim()))
    seq = (per * maskf).sum(dims) / maskf.sum(dims).clamp(min=1) if dims else per * maskf
    return seq.mean()


def clipped_surrogate(logp, old, adv, mask, clip: float, clamp: float, norm: str = "sequence",
                      tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """-min(ratio*A, clip(ratio)*A), averaged by `masked_mean` (per sequence then batch, or per token).

    Stats are sums over the masked positions, so they pool across minibatches: `clipped` counts the positions
    whose gradient the clip removed (the clipped term was the minimum, or the log-ratio hit its clamp),
    `kl` sums the approximate KL (ratio - 1) - log ratio, `n` counts the positions."""
    diff = logp - old
    log_ratio = diff.clamp(-clamp, clamp)
    ratio = torch.exp(log_ratio)
    a = adv.view(-1, *([1] * (logp.dim() - 1)))
    per = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    maskf = mask.float()
    with torch.no_grad():
        removed = ((a > 0) & (ratio > 1 + clip)) | ((a < 0) & (ratio < 1 - clip)) | (diff.abs() > clamp)
        stats = {"clipped": (removed.float() * maskf).sum(), "kl": (((ratio - 1) - log_ratio) * maskf).sum(),
                 "n": maskf.sum()}
    return masked_mean(per, mask, norm, tokens), stats


def kl_to_reference(logp: torch.Tensor, ref: torch.Tensor, mask, norm: str = "sequence",
                    tokens: torch.Tensor | None = None) -> torch.Tensor:
    """k3 estimate of KL(policy || reference) at the sampled positions: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = (ref - logp).clamp(-20, 20)
    return masked_mean(torch.exp(d) - d - 1, mask, norm, tokens)


def token_denominators(accelerator: Accelerator, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """rl.loss_norm=token over several processes: each stream's positions in the global minibatch, divided by the
    number of processes. DDP averages the processes' gradients, so dividing each local sum by this gives the
    gradient of one mean over every position of every process, as one process with the whole minibatch would."""
    counts = torch.stack([m.float().sum() for m in masks.values()])
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, "sum") / accelerator.num_processes
    return dict(zip(masks, counts))


def stream_masks(mb: dict[str, torch.Tensor], latent_policy: str) -> dict[str, torch.Tensor]:
    """The positions of each log-prob stream that hold an action. With the latents at their mean (no Gaussian
    term), the latent stream's actions are the stop head's "continue" decisions, one per group start; counting the
    c - 1 other latents of a group would divide that gradient by about c. A reasoner whose LM head stops (CoLaR,
    `rl_stop_first`) scores the emitted <|end-latent|> as the answer's first token, as upstream (LatentReasoner.score
    puts it there), and has no stop stream of its own."""
    latent = mb["rl_active"] & mb["rl_consulted"] if latent_policy == "mean" else mb["rl_active"]
    stop, answer = mb["rl_stopped"].any(-1), mb["rl_token_mask"]
    if "rl_stop_first" in mb:
        return {"latent": latent, "stop": torch.zeros_like(stop), "answer": torch.cat([stop[:, None], answer], 1)}
    return {"latent": latent, "stop": stop, "answer": answer}


@dataclass
class Trajectories:
    """B*G sampled trajectories and what they earned."""

    batch: dict[str, torch.Tensor]  # the scoring batch (prefix, rl_* tensors)
    rollout_logps: dict[str, torch.Tensor]  # log-probs recorded while sampling
    rewards: torch.Tensor
    terms: dict[str, torch.Tensor]  # per-trajectory acc / fmt / coh
    latents_used: torch.Tensor
    sigma: float
    plan_seconds: float = 0.0  # wall time of the coherence reward: its plan decode and scoring (0: nothing decoded)

    def select_groups(self, groups: torch.Tensor, group_size: int) -> Trajectories:
        """The trajectories of the given groups (question indices), in that order."""
        rows = (groups[:, None] * group_size + torch.arange(group_size)[None]).flatten()
        dev = self.batch["prefix_ids"].device
        return Trajectories(_select(self.batch, rows.to(dev)), {k: v[rows.to(v.device)] for k, v in
                                                                self.rollout_logps.items()},
                            self.rewards[rows], {k: v[rows] for k, v in self.terms.items()}, self.latents_used[rows],
                            self.sigma, self.plan_seconds)


def sign_test_p(gained: int, lost: int) -> float:
    """One-sided sign test: the chance of at least `gained` wins in `gained + lost` fair coin flips (the problems
    two policies answer differently), i.e. how often a policy no better than its start would look this good."""
    n = gained + lost
    return sum(math.comb(n, k) for k in range(gained, n + 1)) / 2 ** n


def compare_to_start(start: list[bool], correct: list[bool]) -> tuple[int, int, float]:
    """Problems a policy answers right that its start got wrong (gained), the reverse (lost), and sign_test_p."""
    pairs = list(zip(start, correct, strict=True))
    gained = sum(c and not s for s, c in pairs)
    lost = sum(s and not c for s, c in pairs)
    return gained, lost, sign_test_p(gained, lost)


def keep_signal_groups(traj: Trajectories, group_size: int, n_keep: int) -> tuple[Trajectories, float]:
    """Dynamic sampling: keep n_keep groups, those whose rewards differ first (in rollout order), then equal ones
    to fill up; returns the kept trajectories and the share of kept groups that carry a signal."""
    equal = equal_reward_groups(traj.rewards, group_size)
    order = torch.cat([(~equal).nonzero().flatten(), equal.nonzero().flatten()])[:n_keep]
    return traj.select_groups(order, group_size), float((~equal[order]).float().mean())


@torch.no_grad()
def rollout(model: LatentReasoner, builder: SequenceBuilder, problems: list[Problem], cfg: RunConfig,
            generator: torch.Generator, device, text_embed: torch.nn.Module | None = None) -> Trajectories:
    """G sampled trajectories per problem and their rewards. `text_embed`: the table the step decoder reads
    its own tokens through when decoding plans for coherence (RL passes a frozen snapshot of the base table)."""
    r = cfg.rl
    tok = builder.tok
    G = r.group_size
    prompts = [builder.eval_prompt(p.question) for p in problems for _ in range(G)]
    golds = [p.answer for p in problems for _ in range(G)]
    ids, mask = left_pad([p for p, _ in prompts], tok.pad_token_id)
    n_slots = torch.tensor([s for _, s in prompts])
    ids, mask, n_slots = ids.to(device), mask.to(device), n_slots.to(device)
    state, gen = model.answer(ids, mask, n_slots, builder.end_id, tok.eos_token_id, tok.pad_token_id,
                              r.max_new_tokens, sample_latents=r.latent_policy == "gaussian", stop_mode="sample",
                              temperature=r.temperature, generator=generator, latent_temperature=r.latent_temperature)
    # Rewards from the decoded answers and (for coherence) the decoded latent groups.
    texts = [tok.decode(gen.tokens[i, : int(gen.lengths[i])].tolist()) for i in range(len(golds))]
    preds = [extract_answer(END_LATENT + t) for t in texts]
    acc = torch.tensor([accuracy_reward(p, g) for p, g in zip(preds, golds)])
    fmt = torch.tensor([format_reward(t) for t in texts])
    w = reward_weights(cfg)
    only = r.reward == "coherence_only"
    # Coherence is scored, and its plan decoded, only where it can change the reward: under the full reward a
    # wrong answer earns w_coh * coh * acc = 0 whatever its plan says (rewards.coherence_matters), so its plan is
    # not decoded and its coh stays 0 (terms["coh"] of a wrong rollout is 0 under the full reward).
    needed = torch.tensor([coherence_matters(a, w, only) for a in acc.tolist()], dtype=torch.bool)
    coh = torch.zeros(len(preds))
    t_plans = time.perf_counter()
    if needed.any():  # (decode_plans ends with .tolist(), which waits for the device: the time is the decode's)
        steps = decode_plans(model, state, tok, r.coherence_max_tokens, text_embed, keep=needed)
        for i in needed.nonzero().flatten().tolist():
            coh[i] = coherence_reward(steps[i], preds[i], r.coherence_mode)
    plan_seconds = time.perf_counter() - t_plans if needed.any() else 0.0
    rewards = torch.tensor([total_reward(a, f, c, w, only) for a, f, c in zip(acc.tolist(), fmt.tolist(),
                                                                              coh.tolist())])
    if r.length_penalty == "divide":  # CoLaR-RL's punish_latent_length: shorter right chains earn more
        rewards = rewards / state.active.sum(-1).cpu().clamp(min=1)
    batch = {
        "prefix_ids": ids, "prefix_mask": mask, "n_slots": n_slots, "rl_z": state.z, "rl_active": state.active,
        "rl_consulted": state.consulted, "rl_stopped": state.stopped, "rl_tokens": gen.tokens,
        "rl_token_mask": gen.mask, "end_id": torch.tensor(builder.end_id),
        "rl_temperature": torch.tensor(float(r.temperature)),
    }
    if r.latent_temperature != 1.0:
        batch["rl_latent_temperature"] = torch.tensor(float(r.latent_temperature))
    if model.spec.lm_head_stop:  # the stop is the answer's first token (stream_masks)
        batch["rl_stop_first"] = torch.tensor(True)
    if r.latent_policy == "mean":  # z = mu is no action: the latent stream keeps only the stop head's "continue"
        batch["rl_latent_scale"] = torch.tensor(0.0)
    elif r.latent_logratio == "mean" and state.z.shape[1]:
        batch["rl_latent_scale"] = torch.tensor(1.0 / state.z.shape[-1])
    sigma = float(torch.exp(0.5 * state.logvar)[state.active].mean()) if state.logvar is not None and \
        state.active.any() else 0.0
    latent_lp = gaussian_log_density(state.z, state.mu, state.logvar, r.latent_temperature) * state.active \
        if state.mu is not None and r.latent_policy == "gaussian" else torch.zeros(state.active.shape, device=device)
    terms = {"acc": acc, "fmt": fmt, "coh": coh, "coh_scored": needed.float()}
    return Trajectories(batch, {"answer": gen.logprobs, "latent_gaussian": latent_lp}, rewards, terms,
                        state.active.sum(-1).cpu(), sigma, plan_seconds)


def _select(batch: dict, idx: torch.Tensor) -> dict:
    return {k: (v if v.dim() == 0 else v[idx]) for k, v in batch.items()}


def grpo_update(model, optimizer, accelerator: Accelerator, traj: Trajectories, adv: torch.Tensor, cfg: RunConfig,
                rng: torch.Generator, ref_model: LatentReasoner | None = None,
                guard: NonFiniteGuard | None = None) -> dict[str, float]:
    """One pass over the shuffled buffer in minibatches.

    Old and new log-probs come from the same call of the accelerate-wrapped module (same autocast precision,
    same DDP wrapper, so gradients are all-reduced), old ones per minibatch right before the updates with the
    same batch composition: the first update's ratio is exactly 1, in bf16 too. Clip and KL statistics pool the
    positions of every minibatch after the first (the first never clips: its policy is the rollout's).
    With rl.kl_coef > 0, `ref_model` (the frozen start policy) scores each minibatch for a k3 KL penalty.
    `guard` stops every process at a non-finite loss and skips a minibatch's step on an fp16 overflow (stats
    `skipped_minibatches`); the loop passes one guard for the whole run."""
    r = cfg.rl
    guard = guard if guard is not None else NonFiniteGuard(accelerator)
    n = adv.shape[0]
    perm = torch.randperm(n, generator=rng).to(adv.device)
    chunks = [perm[i: i + r.minibatch_size] for i in range(0, n, r.minibatch_size)]
    with torch.no_grad():
        olds = [{k: v.detach() for k, v in model(_select(traj.batch, idx)).items()} for idx in chunks]
        with accelerator.autocast():  # the policy is scored under autocast (accelerate's wrapper): so is the start
            refs = [ref_model(_select(traj.batch, idx)) for idx in chunks] if ref_model is not None and r.kl_coef \
                else [None] * len(chunks)
    stats: dict[str, list[float]] = {}
    pooled: dict[str, torch.Tensor] = {}
    for k, (idx, old, ref) in enumerate(zip(chunks, olds, refs)):
        mb = _select(traj.batch, idx)
        new = model(mb)
        if k == 0:  # before any update the policy is unchanged: every ratio must be exactly 1
            stats["first_ratio_dev"] = [max(float((new[s].detach() - old[s]).abs().max()) for s in new)]
        a = adv[idx]
        masks = stream_masks(mb, r.latent_policy)
        tokens = token_denominators(accelerator, masks) if r.loss_norm == "token" else dict.fromkeys(masks)
        lat_loss, s_lat = clipped_surrogate(new["latent"], old["latent"], a, masks["latent"], r.clip,
                                            r.logratio_clamp, r.loss_norm, tokens["latent"])
        stop_loss, _ = clipped_surrogate(new["stop"], old["stop"], a, masks["stop"], r.clip, r.logratio_clamp,
                                         r.loss_norm, tokens["stop"])
        ans_loss, s_ans = clipped_surrogate(new["answer"], old["answer"], a, masks["answer"], r.clip,
                                            r.logratio_clamp, r.loss_norm, tokens["answer"])
        loss = lat_loss + stop_loss + ans_loss
        if ref is not None:
            kl = sum(kl_to_reference(new[s], ref[s], masks[s], r.loss_norm, tokens[s]) for s in masks)
            loss = loss + r.kl_coef * kl
            stats.setdefault("kl_to_start", []).append(float(kl.detach()))
        guard.check_loss(loss, functools.partial(_nonfinite_loss, lat_loss, stop_loss, ans_loss))
        optimizer.zero_grad()
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), r.max_grad_norm if r.max_grad_norm > 0 else 1e12)
        # a non-finite norm stops the run before the optimizer writes NaN into the weights, unless fp16 loss
        # scaling skips the step (optimizer.step is still called: the scaler lowers its scale there)
        updated = guard.step_ok(grad_norm, functools.partial(_nonfinite_gradient, loss, model))
        optimizer.step()
        stats.setdefault("skipped_minibatches", []).append(float(not updated))
        terms = {"loss": loss, "latent_loss": lat_loss, "stop_loss": stop_loss, "answer_loss": ans_loss}
        if updated:
            terms["grad_norm"] = grad_norm
        for name, v in terms.items():
            stats.setdefault(name, []).append(float(v.detach()) if torch.is_tensor(v) else float(v))
        if k > 0:
            for stream, st in (("latent", s_lat), ("answer", s_ans)):
                for name, v in st.items():
                    pooled[f"{name}_{stream}"] = pooled.get(f"{name}_{stream}", 0.0) + v
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["skipped_minibatches"] = sum(stats["skipped_minibatches"])
    for stream in ("latent", "answer"):
        n_pos = float(pooled.get(f"n_{stream}", 0.0))
        out[f"clip_frac_{stream}"] = float(pooled[f"clipped_{stream}"]) / n_pos if n_pos else 0.0
        out[f"approx_kl_{stream}"] = float(pooled[f"kl_{stream}"]) / n_pos if n_pos else 0.0
    return out


def _nonfinite_loss(lat_loss, stop_loss, ans_loss) -> str:
    return (f"non-finite RL loss (terms: latent, stop, answer = {lat_loss.item():.3g}, {stop_loss.item():.3g}, "
            f"{ans_loss.item():.3g})")


def _nonfinite_gradient(loss, model) -> str:
    return f"non-finite RL gradient (loss {loss.item():.4g}; first in {first_nonfinite_grad(model)})"


def across_processes(accelerator: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Every process's step metrics, averaged (first_ratio_dev: the maximum), so an RL curve does not depend on
    the number of processes; the SFT loop averages its own the same way."""
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(metrics)
    local = torch.tensor([[float(metrics[k]) for k in keys]], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(local).view(accelerator.num_processes, len(keys))
    return {k: float(every[:, i].max() if k == "train/first_ratio_dev" else every[:, i].mean())
            for i, k in enumerate(keys)}


def freeze_for_rl(model: LatentReasoner, cfg: RunConfig) -> None:
    """What RL does not train: the step decoder (it only scores coherence) and, with rl.train_lm=false, the
    language model (only the latent and stop heads move)."""
    if model.decoder is not None:
        model.decoder.requires_grad_(False)
    if not cfg.rl.train_lm:
        model.lm.requires_grad_(False)


def questions_per_process(cfg: RunConfig) -> int:
    """Questions one process rolls out per RL step: B, or B x oversample under dynamic sampling (of which B groups
    are kept)."""
    return cfg.rl.questions_per_step * (cfg.rl.oversample if cfg.rl.dynamic_sampling else 1)


def rl_total_steps(cfg: RunConfig, n_train: int, world: int) -> int:
    """rl.steps, or one epoch: every training question rolled out once over all processes."""
    return cfg.rl.steps or max(1, n_train // (questions_per_process(cfg) * world))


def rollout_questions(order: list[int], cursor: int, rank: int, n_q: int) -> list[int]:
    """The training indices process `rank` rolls out at the step whose shared cursor is `cursor`: the rank-th
    slice of n_q consecutive questions in the shared order (wrapping around), so the processes of one step roll
    out disjoint questions and one step of W processes covers what one process would over W x n_q."""
    start = cursor + rank * n_q
    return [order[(start + i) % len(order)] for i in range(n_q)]


def rl_learning_rate(cfg: RunConfig, step: int, total: int) -> float:
    """rl.lr with a linear warmup over rl.warmup_steps, then constant or cosine decay to 10% at the last step."""
    r = cfg.rl
    return warmup_then_decay(r.lr, r.warmup_steps, r.lr_schedule, step, step / max(total - 1, 1))


def train_rl(cfg: RunConfig, resume: bool = False) -> Path:
    """GRPO from an SFT checkpoint of the method `cfg.method.name` continues (`model.init_from`); returns the run
    directory."""
    if not cfg.model.init_from:
        wanted = get_method(RL_METHODS.get(cfg.method.name, "atp")).label
        raise ValueError(f"{cfg.method.name} needs model.init_from: a {wanted} checkpoint (RUN/best/model or RUN/final)")
    accelerator, train_set, val_set, run_path, ckpt = prepare_run(cfg, resume, find_unused_parameters=True)
    is_main = accelerator.is_main_process
    total = rl_total_steps(cfg, len(train_set), accelerator.num_processes)
    # What the learning-rate schedule is laid over: a resumed run keeps it (runs.check_resume_budget).
    budget = {"rl.steps": cfg.rl.steps, "scheduled_steps": total}
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False) if ckpt else None
    if state is not None:  # checked before anything is written: a refused resume leaves the run as it was
        check_resume_budget(ckpt, state["progress"], budget)
    model, tok = LatentReasoner.from_pretrained(ckpt / "model" if ckpt else checkpoint_weights(cfg.model.init_from),
                                                dtype=DTYPES[cfg.model.dtype])
    wanted = RL_METHODS.get(cfg.method.name, "atp")  # the method whose checkpoints this RL trains
    if model.spec.method != wanted or model.latent_head is None:
        raise ValueError(f"{cfg.model.init_from}: {cfg.method.name} starts from {get_method(wanted).label} "
                         f"checkpoints, got method '{model.spec.method}'")
    if model.spec.use_decoder and model.decoder is None and is_main:
        warnings.warn("decoder_mode=shared: the policy decodes its own plans, so it is its own coherence judge "
                      "and can learn to please it; a separate decoder is frozen during RL", stacklevel=2)
    freeze_for_rl(model, cfg)
    m = cfg.model  # a LoRA checkpoint trains its adapters (and the heads); lora_r on a full one adds them to the LM
    add_lora_to_reasoner(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules,
                         source=f"model.init_from {m.init_from}")
    run = open_run_dir(run_path, cfg, resume, ckpt, accelerator) if is_main else None
    progress = {"step": 0, "best_val": -1.0, "cursor": 0, "elapsed": 0.0}
    builder = builder_for(tok, model.spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.rl.lr, weight_decay=cfg.rl.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        progress.update(state["progress"])
        if accelerator.scaler is not None and "scaler" in state:
            accelerator.scaler.load_state_dict(state["scaler"])
    progress["budget"] = budget
    # The step decoder reads its own tokens through the base table it was trained with; RL keeps training that
    # table, so coherence is judged through a frozen snapshot taken now (the decoder itself is frozen too).
    # A resumed run takes it from the RL start weights again, so it continues exactly.
    table = model.lm.get_input_embeddings().weight
    if ckpt is not None:
        start_lm = AutoModelForCausalLM.from_pretrained(checkpoint_weights(cfg.model.init_from) / "lm",
                                                        dtype=table.dtype)
        table = start_lm.get_input_embeddings().weight
    text_embed = torch.nn.Embedding.from_pretrained(table.detach().clone(), freeze=True)
    ref_model = None
    if cfg.rl.kl_coef > 0:  # the frozen start policy, without a decoder (it only scores the three streams)
        ref_model, _ = LatentReasoner.from_pretrained(checkpoint_weights(cfg.model.init_from),
                                                      dtype=DTYPES[cfg.model.dtype],
                                                      spec=dataclasses.replace(model.spec, use_decoder=False))
        ref_model.requires_grad_(False)
        ref_model.eval()
    model, optimizer = accelerator.prepare(model, optimizer)
    text_embed = text_embed.to(accelerator.device)
    if ref_model is not None:
        ref_model.to(accelerator.device)
    raw = accelerator.unwrap_model(model)
    raw.eval()  # no dropout: rollouts and scoring must see the same policy
    device = accelerator.device

    B, world, rank = cfg.rl.questions_per_step, accelerator.num_processes, accelerator.process_index
    order = list(range(len(train_set)))
    random.Random(cfg.train.seed).shuffle(order)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank + progress["step"])
    perm_rng = torch.Generator().manual_seed(cfg.train.seed + 7 + progress["step"])
    rngs = {"rollout": gen, "minibatch": perm_rng}
    if state is not None:  # every process continues its own random streams (older checkpoints: the main one's)
        every = state["rng"].get("processes")
        own = every[rank] if every and len(every) == world else (state["rng"] if rank == 0 else None)
        for k, g in rngs.items():
            if own is not None:
                g.set_state(own[k])
    guard = NonFiniteGuard(accelerator)
    if val_set and progress["step"] == 0 and is_main:
        # The start policy is the first candidate for best/: RL keeps a checkpoint only when it beats its start
        # on val, and the val curve starts where SFT left off.
        summary, progress["start_correct"] = validate(raw, builder, val_set, cfg, device)
        run.log({"eval/val_accuracy": summary.accuracy, "eval/val_tokens": summary.mean_tokens}, 0)
        progress["best_val"] = summary.accuracy
        _save(run.path / "best", raw, tok, optimizer if cfg.train.save_checkpoints else None, progress, rngs)
    bar = progress_bar(total=total, initial=progress["step"], desc=cfg.method.name, disable=not is_main)
    t0 = time.time() - progress["elapsed"]  # wall time counts across resumes (the safety stop too)
    while progress["step"] < total:
        # Each process rolls out its own questions: consecutive slices of one shared order.
        n_q = questions_per_process(cfg)
        problems = [train_set[i] for i in rollout_questions(order, progress["cursor"], rank, n_q)]
        progress["cursor"] = (progress["cursor"] + n_q * world) % len(order)
        t_step = time.time()
        with accelerator.autocast():  # sample in the precision the update scores in
            traj = rollout(raw, builder, problems, cfg, gen, device, text_embed)
        # everything rolled out (latent slots and answer tokens), kept by dynamic sampling or not: the time covers it
        sampled = int(traj.batch["rl_token_mask"].sum() + traj.batch["rl_active"].sum())
        signal = None
        if cfg.rl.dynamic_sampling:  # every process keeps B groups, so all run the same number of minibatches
            sampled_rewards = traj.rewards
            traj, signal = keep_signal_groups(traj, cfg.rl.group_size, B)
        adv = group_advantages(traj.rewards, cfg.rl.group_size).to(device)
        for g in optimizer.param_groups:
            g["lr"] = rl_learning_rate(cfg, progress["step"], total)
        t_update = time.time()
        stats = grpo_update(model, optimizer, accelerator, traj, adv, cfg, perm_rng, ref_model, guard)
        update_seconds = time.time() - t_update  # stats hold floats read off the device: its work is done
        progress["step"] += 1
        progress["elapsed"] = time.time() - t0
        equal = equal_reward_groups(traj.rewards, cfg.rl.group_size).float().mean()
        lat = traj.latents_used.float()
        seconds = time.time() - t_step
        metrics = {f"train/{k}": v for k, v in stats.items()} | {
            "train/reward": float(traj.rewards.mean()), "train/accuracy": float(traj.terms["acc"].mean()),
            "train/reward_accuracy": float(traj.terms["acc"].mean()), "train/reward_format": float(traj.terms["fmt"].mean()),
            # coherence over the rollouts where it was scored (under the full reward: the right ones)
            "train/reward_coherence": float(traj.terms["coh"].sum() / traj.terms["coh_scored"].sum().clamp(min=1)),
            "train/equal_reward_groups": float(equal),
            "train/active_latents": float(lat.mean()), "train/sigma": traj.sigma,
            "train/step_seconds": seconds, "train/sampled_tokens": sampled,
            # where the step goes: sampling (rollout, rewards; read back on the host) and the minibatch updates
            "train/rollout_seconds": t_update - t_step, "train/update_seconds": update_seconds,
            # the coherence reward's cost (the paper names it as a limitation): its plan decode, and its share
            "train/plan_decode_seconds": traj.plan_seconds,
            "train/plan_decode_share": traj.plan_seconds / max(seconds, 1e-9),
            "train/sampled_tokens_per_s": sampled / max(seconds, 1e-9),
            "train/lr": optimizer.param_groups[0]["lr"],
        }
        if guard.scaler is not None:  # fp16 loss scaling: the scale after this step's minibatches
            metrics["train/loss_scale"] = guard.scaler.get_scale()
        if signal is not None:  # share of kept groups with a signal; rewards over everything that was sampled
            metrics |= {"train/signal_groups": signal, "train/sampled_reward": float(sampled_rewards.mean())}
        metrics = across_processes(accelerator, metrics)
        cut = False  # train.max_minutes ran out: this step is the run's last, validated and checkpointed as such
        if cfg.train.max_minutes:  # one decision for every process: each has its own clock
            if time.time() - t0 > 60 * cfg.train.max_minutes:
                accelerator.set_trigger()
            cut = accelerator.check_trigger()
        last = progress["step"] == total or cut
        checkpoint = cfg.train.save_checkpoints and (progress["step"] % cfg.rl.checkpoint_every == 0 or last)
        streams = process_streams(accelerator, rngs) if checkpoint else None  # a gather: on every process
        if is_main:
            run.log(metrics, progress["step"])
            run.log_histogram("train/latents_used", lat, progress["step"])
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['train/reward']:.3f}", acc=f"{metrics['train/accuracy']:.2f}",
                            lat=f"{lat.mean():.1f}")
            if val_set and (progress["step"] % cfg.rl.val_every == 0 or last):
                summary, correct = validate(raw, builder, val_set, cfg, device)
                start = progress.get("start_correct")  # None: resumed from a checkpoint that predates it
                gained, lost, p = compare_to_start(start, correct) if start else (0, 0, 0.0)
                run.log({"eval/val_accuracy": summary.accuracy, "eval/val_tokens": summary.mean_tokens,
                         "eval/val_gained_vs_start": gained, "eval/val_lost_vs_start": lost,
                         "eval/val_sign_p_vs_start": p}, progress["step"])
                # Best checkpoint by validation accuracy, never test (METHOD.md §7).
                if summary.accuracy > progress["best_val"] and p <= cfg.rl.best_max_p:
                    progress["best_val"] = summary.accuracy
                    _save(run.path / "best", raw, tok, optimizer if cfg.train.save_checkpoints else None,
                          progress, rngs)
            if checkpoint:
                _save(run.checkpoint_dir_for(progress["step"]), raw, tok, optimizer, progress, rngs, streams,
                      accelerator)
                run.prune_checkpoints(cfg.train.keep_last)
        if cut:
            break
    bar.close()
    finish_run(accelerator, model, run, tok, progress["step"], (time.time() - t0) / 60, total)
    accelerator.wait_for_everyone()
    return run.path if run is not None else run_path


def process_streams(accelerator: Accelerator, rngs: dict[str, torch.Generator]) -> dict:
    """This process's generator states, and with several processes every process's under "processes" (a gather:
    call it on every process), so that each resumes its own rollout stream."""
    own = {k: g.get_state() for k, g in rngs.items()}
    return own | {"processes": gather_object([own])} if accelerator.num_processes > 1 else own


def _save(path: Path, raw: LatentReasoner, tok, optimizer, progress: dict, rngs: dict, streams: dict | None = None,
          accelerator: Accelerator | None = None) -> None:
    scaler = getattr(accelerator, "scaler", None)
    save_training_checkpoint(path, raw, tok, optimizer, progress,
                             streams if streams is not None else {k: g.get_state() for k, g in rngs.items()},
                             scaler.state_dict() if scaler is not None else None)
