"""The bench's jobs and suites: what each job is called, what it starts from and trains on, and which run together.

A job is one config per suite folder (configs/<suite>/<job>.yaml) and one entry of JOBS. A method's own job (named
after it) and its RL job (its MethodDef.rl_name with "_" for "-", e.g. atp_rl) take their label and start from the
method's MethodDef (modeling/methods/), so adding a method adds no entry here; every other job (a configuration of
methods, an RL variant, an ablation) is one `Job` below. A suite lists its jobs in priority order.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from atp_latent.modeling.methods import METHODS

TEST_SPLITS = ["test", "test_large", "test_long", "test_perturbed"]


# Held-out problems per seed folder (write_val_large; 0: none) and RL-policy rollouts of each, when the command line
# does not say. RL's best/ is picked on val with its start as the first candidate, so RL is judged against its start
# on these only. The GPU suite draws a few hundred and evaluates them greedily, in seconds.
DEFAULT_VAL_LARGE = {"cpu": 5000, "gpu": 500}
# Rollouts per test problem for the reasoning-path diversity tables, by regime (bench --diversity)
DEFAULT_DIVERSITY = {"default": 0, "many-plans": 8}
DEFAULT_ROLLOUTS = {"cpu": 8, "gpu": 0}


@dataclass(frozen=True)
class Job:
    label: str  # how tables and plots name it
    start: str | None = None  # the job whose best validation checkpoint it starts from (None: from scratch)
    data: tuple[str, str] | None = None  # (train, val) under the seed folder's data/ (None: train.jsonl, val.jsonl)


RL_KNOBS = ("atp_rl_low_lr", "atp_rl_high_lr", "atp_rl_cosine", "atp_rl_group16", "atp_rl_dynamic",
            "atp_rl_dynamic8", "atp_rl_token_norm", "atp_rl_kl", "atp_rl_logratio_mean", "atp_rl_latent_temp",
            "atp_rl_heads_only", "atp_rl_answer_temp05", "atp_rl_dynamic8_temp05", "atp_rl_latent_mean",
            "atp_rl_dynamic8_temp05_latent_mean")

NEW_STYLE_JOBS = ("atp_rl_new_style", "atp_rl_new_style_dynamic")  # RL on questions in test_perturbed's style

JOBS: dict[str, Job] = {
    **{name: Job(m.label, m.starts_from) for name, m in METHODS.items()},
    **{m.rl_name.replace("-", "_"): Job(m.rl_label or m.rl_name, name) for name, m in METHODS.items() if m.rl_name},
    "atp_rl_coherence": Job("ATP-Latent (RL, coherence only)", "atp"),
    "simcot_codi": Job("SIM-CoT on CODI", "cot"),
    # RL from a start that leaves room: the quickstart's shorter SFT, then the recipe that gained there
    "cot_short": Job("CoT-SFT, 1,600 steps"),
    "atp_short": Job("ATP-Latent (SFT), 2,400 steps", "cot_short"),
    "atp_rl_room": Job("ATP-Latent (RL from the 2,400-step SFT, latents at their mean)", "atp_short"),
    "atp_no_kl": Job("ATP SFT, no KL (beta_kl=0)", "cot"),
    "atp_no_stop": Job("ATP SFT, no stop head", "cot"),
    "atp_no_decoder": Job("ATP SFT, no decoder", "cot"),
    "atp_no_decoder_no_kl": Job("ATP SFT, no decoder, no KL", "cot"),
    "atp_no_decoder_no_vae": Job("ATP SFT, no decoder, no VAE (Coconut + stop head)", "cot"),
    "atp_no_decoder_no_kl_no_stop": Job("ATP SFT, VAE head only (no decoder, KL, stop head)", "cot"),
    "atp_no_decoder_no_kl_stop_detached": Job("ATP SFT, no decoder, no KL, stop loss kept from the LM", "cot"),
    "atp_no_decoder_no_vae_stop_detached": Job("Coconut + stop head, stop loss kept from the LM", "cot"),
    "atp_rl_no_coherence": Job("ATP RL, coherence weight 0", "atp"),
    "atp_rl_long": Job("ATP RL, twice the steps", "atp"),
    "atp_no_vae": Job("ATP SFT, no VAE (z = hidden state)", "cot"),
    "atp_rl_low_lr": Job("ATP RL, lr 1e-5", "atp"),
    "atp_rl_high_lr": Job("ATP RL, lr 1e-4", "atp"),
    "atp_rl_dynamic": Job("ATP RL, dynamic sampling", "atp"),
    "atp_rl_dynamic8": Job("ATP RL, dynamic sampling, 8x questions", "atp"),
    "atp_rl_answer_temp05": Job("ATP RL, answer temperature 0.5", "atp"),
    "atp_rl_dynamic8_temp05": Job("ATP RL, dynamic sampling, 8x questions, answer temperature 0.5", "atp"),
    "atp_rl_latent_mean": Job("ATP RL, latents at their mean (no Gaussian term)", "atp"),
    "atp_rl_dynamic8_temp05_latent_mean": Job("ATP RL, dynamic sampling, 8x questions, answer T 0.5, latents at mean", "atp"),
    "atp_rl_token_norm": Job("ATP RL, token-level loss norm", "atp"),
    "atp_rl_kl": Job("ATP RL, KL to start 0.1", "atp"),
    "atp_rl_logratio_mean": Job("ATP RL, per-dim latent log-ratio", "atp"),
    "atp_rl_cosine": Job("ATP RL, warmup + cosine lr", "atp"),
    "atp_rl_group16": Job("ATP RL, 16 rollouts per question", "atp"),
    "atp_rl_latent_temp": Job("ATP RL, latent exploration x3", "atp"),
    "atp_rl_heads_only": Job("ATP RL, heads only", "atp"),
    "atp_rl_fresh": Job("ATP RL on fresh in-distribution questions", "atp", data=("fresh/train.jsonl", "val.jsonl")),
    "atp_rl_new_style": Job("ATP-Latent (RL on new-style questions)", "atp", data=("new_style/train.jsonl", "new_style/val.jsonl")),
    "atp_rl_new_style_dynamic": Job("ATP-Latent (RL on new-style questions, dynamic sampling)", "atp", data=("new_style/train.jsonl", "new_style/val.jsonl")),
}
LABELS = {name: job.label for name, job in JOBS.items()}
STARTS = {name: job.start for name, job in JOBS.items() if job.start}
JOB_DATA = {name: job.data for name, job in JOBS.items() if job.data}

# The order of a bench's tables: the references, the latent baselines as in the paper's Table 1, ATP and its RL rows;
# any other row after them in the order it ran (training runs in dependency order, which mixes these groups)
DISPLAY_ORDER = ("cot", "nocot", "icot", "coconut", "codi", "simcot_codi", "colar", "colar_rl", "simcot", "atp",
                 "atp_rl", "atp_rl_no_coherence", "atp_rl_coherence")


def in_display_order(rows: dict) -> dict:
    """`rows` (keyed by job) re-keyed in DISPLAY_ORDER, the jobs it does not name after them in their own order."""
    rank = {job: k for k, job in enumerate(DISPLAY_ORDER)}
    return dict(sorted(rows.items(), key=lambda kv: rank.get(kv[0], len(rank))))


# The bench's paired comparisons (first minus second, seed by seed)
PAIRS = [("atp_rl", "simcot"), ("atp_rl", "coconut"), ("atp_rl", "icot"), ("atp_rl", "codi"),
         ("atp_rl", "simcot_codi"), ("atp_rl", "colar"), ("atp_rl", "colar_rl"), ("atp_rl", "atp"),
         ("colar_rl", "colar"), ("atp_rl_room", "atp_short"),
         ("atp", "simcot"),
         ("atp_rl_coherence", "atp"), ("atp_rl_new_style", "atp"), ("atp_rl_new_style_dynamic", "atp")]


@dataclass(frozen=True)
class Suite:
    name: str  # the configs/<name>/ folder
    phases: tuple[tuple[str, ...], ...]  # the jobs, in priority order (a phase's jobs are independent)
    ablations: tuple[str, ...] = ()  # extra jobs for seed 0, evaluated on the val split only
    claims: tuple[str, ...] = ()  # the rows a regime's claims compare: trained with more seeds (bench --claim-seeds)

    @property
    def jobs(self) -> list[str]:
        return [j for phase in self.phases for j in phase]


_ALL = (("cot", "nocot"), ("atp", "coconut"), ("simcot", "atp_rl"), ("atp_rl_coherence",))
SUITES = {
    "quickstart": Suite("quickstart", (("cot", "nocot"), ("atp", "coconut"), ("atp_rl",))),
    # the CPU bench also runs RL where its reward knows more than SFT did (write_new_style)
    # and the Table-1 baselines iCoT, CODI, SIM-CoT on CODI and CoLaR (from CoT-SFT, the latent rows' steps), and
    # CoLaR-RL (from CoLaR, ATP-RL's steps).
    "cpu": Suite("cpu", _ALL[:-1] + (("atp_rl_coherence", "atp_rl_new_style", "atp_rl_new_style_dynamic"),
                                       ("icot", "codi", "simcot_codi", "colar"), ("colar_rl", "cot_short"),
                                       ("atp_short",), ("atp_rl_room",)),
                 ablations=("atp_no_kl", "atp_no_stop", "atp_no_decoder", "atp_no_decoder_no_kl", "atp_no_vae",
                            "atp_no_decoder_no_vae", "atp_no_decoder_no_kl_no_stop", "atp_no_decoder_no_kl_stop_detached",
                            "atp_no_decoder_no_vae_stop_detached", "atp_rl_no_coherence", "atp_rl_long", *RL_KNOBS,
                            "atp_rl_fresh")),
    # one size up for one GPU: a larger model from scratch, same data and protocol (configs/gpu/), the Table-1
    # baselines included; `--jobs` trains a part of it (e.g. the paper's comparison alone in a short GPU session)
    "gpu": Suite("gpu", _ALL + (("icot", "codi", "simcot_codi", "colar"), ("colar_rl",))),
}


# Jobs that ask questions of the default regime only: RL on questions in test_perturbed's style, and RL from a shorter
# SFT that leaves room (the default regime's SFT saturates in distribution; the many-plans regime's does not)
DEFAULT_REGIME_ONLY = NEW_STYLE_JOBS + ("cot_short", "atp_short", "atp_rl_room")
# RL from ATP SFT, each judged against that start on held-out problems (val_large): the full reward, accuracy and
# format alone (coherence weight 0), the coherence-only variant
RL_FROM_ATP = ("atp_rl", "atp_rl_no_coherence", "atp_rl_coherence")
# Rows a regime adds to the suite (the default regime's ablation of the coherence reward is a claim row there)
REGIME_EXTRA = {"many-plans": ("atp_rl_no_coherence",)}
# The rows the many-plans regime's claims (a)-(d) compare (results/cpu-many-plans), and the seeds they get by default
CLAIM_JOBS = {"many-plans": ("cot", "coconut", "simcot", "atp", *RL_FROM_ATP)}
DEFAULT_CLAIM_SEEDS = {"many-plans": 5}


def regime_suite(suite: Suite, regime: str) -> Suite:
    """The suite as a regime runs it: the default regime's own questions left out of any other, the regime's extra
    rows added (REGIME_EXTRA, no longer ablations), and the rows that regime's claims compare marked
    (Suite.claims)."""
    if regime == "default":
        return suite
    phases = tuple(p for p in (tuple(j for j in phase if j not in DEFAULT_REGIME_ONLY) for phase in suite.phases) if p)
    extra = tuple(j for j in REGIME_EXTRA.get(regime, ()) if j not in suite.jobs)
    phases += (extra,) if extra else ()
    claims = CLAIM_JOBS.get(regime, ())
    return Suite(suite.name, phases, tuple(j for j in suite.ablations if j not in extra),
                 tuple(j for p in phases for j in p if j in claims))


# Per regime, the most steps an in-distribution problem has (data/synthetic.py): the stepwise latent curriculum with
# one group per step (Coconut's schedule at c = 1: Coconut, SIM-CoT, ATP; configs/quickstart/latent.yaml, whose 3
# stages fit the default regime's 2-3 steps) gets that many stages, so no group carries several steps. Recipes
# with their own latent count keep it (CODI's 6 latents, SIM-CoT on CODI's 6 groups, CoLaR's compression), and RL
# takes its stages from the checkpoint it starts from.
REGIME_MAX_STEPS = {"many-plans": 5}


def regime_sets(suite: Suite, regime: str, jobs: list[str]) -> dict[str, list[str]]:
    """--set overrides per job that `regime` needs (REGIME_MAX_STEPS): job -> ["curriculum.max_latent_stage=5"]."""
    from atp_latent.config import load_config
    from atp_latent.modeling.methods import get_method, is_rl

    steps = REGIME_MAX_STEPS.get(regime)
    out: dict[str, list[str]] = {}
    for job in jobs if steps else ():
        cfg = load_config(str(config_path(suite, job)))
        if not is_rl(cfg.method.name) and get_method(cfg.method.name).chain == "curriculum" and cfg.method.latents_per_step == 1 \
                and cfg.curriculum.max_latent_stage < steps:
            out[job] = [f"curriculum.max_latent_stage={steps}"]
    return out


def seed_jobs(suite: Suite, seed: int, seeds: int) -> list[str]:
    """The jobs seed `seed` trains: every job below `seeds`, beyond it only the claim rows and what they start from."""
    return suite.jobs if seed < seeds else [j for j in suite.jobs if j in with_starts(list(suite.claims))]


def with_starts(jobs: list[str]) -> list[str]:
    """`jobs` and every job they start from (STARTS, transitively), in the order given, starts first."""
    out: list[str] = []

    def add(job):
        if job in out:
            return
        if STARTS.get(job):
            add(STARTS[job])
        out.append(job)

    for job in jobs:
        add(job)
    return out


def subset(suite: Suite, jobs: list[str]) -> Suite:
    """The suite restricted to `jobs` and what they start from (bench --jobs); unknown jobs are refused in one line."""
    unknown = [j for j in jobs if j not in suite.jobs]
    if unknown:
        raise ValueError(f"suite {suite.name!r} has no job {', '.join(map(repr, unknown))} "
                         f"(its jobs: {', '.join(suite.jobs)})")
    keep = set(with_starts(jobs))
    phases = tuple(p for p in (tuple(j for j in phase if j in keep) for phase in suite.phases) if p)
    return Suite(suite.name, phases, suite.ablations, tuple(j for j in suite.claims if j in keep))


def config_path(suite: Suite, job: str) -> Path:
    return Path(str(resources.files("atp_latent") / "configs" / suite.name / f"{job}.yaml"))


def _label(job: str) -> str:
    return LABELS.get(job, job)

