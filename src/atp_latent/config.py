"""Run configuration: one dataclass per concern, loaded from YAML with dotted overrides (`--set optim.lr=3e-4`).

Defaults are the paper recipe (METHOD.md §11) where the method defines one; the quickstart and benchmark
configs under configs/ shrink them for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from atp_latent.configtools import ConfigError, compose, to_dict
from atp_latent.modeling.methods import CONFIG_NAMES

# The registered methods and RL pseudo-methods (modeling/methods/): configs are checked against the registry
Method = Literal[CONFIG_NAMES]  # type: ignore[valid-type]
# accelerate's experiment trackers (train.report_to)
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # HF id or local path; None builds a tiny model from `preset`
    preset: str = "llama-tiny"  # tiny randomly initialised model (see modeling/factory.py)
    init_from: str | None = None  # checkpoint directory to start from (e.g. a CoT-SFT run's final/)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_vocab: int = 4096  # tiny tokenizer only: vocabulary cap when built from the training corpus
    # LoRA through peft (CODI and CoLaR: r 128, alpha 32 upstream): adapters on the LM (and on a trainable separate
    # step decoder); its own weights, embeddings included, stay frozen; the heads train in full. None: full
    # fine-tuning. A checkpoint that has adapters keeps them (model.init_from, RL): lora_r, if set, must match them.
    lora_r: int | None = None
    lora_alpha: float = 32
    lora_dropout: float = 0.0
    # peft's target_modules: "all-linear" (every linear layer but the output head), a list of module names
    # ([q_proj, v_proj]), or one string as a regex over the full module names
    lora_target_modules: Any = "all-linear"

    def __post_init__(self):
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1 (or null: full fine-tuning), got {self.lora_r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        t = self.lora_target_modules
        if not (isinstance(t, str) and t or isinstance(t, list | tuple) and t and all(isinstance(m, str) and m for m in t)):
            raise ValueError(f"lora_target_modules must be 'all-linear', a list of module names or a regex, got {t!r}")
        if not isinstance(t, str):
            self.lora_target_modules = list(t)


@dataclass
class DataConfig:
    train: str = "synthetic/train.jsonl"  # a file (any supported format) or a shared-data name
    val: str | None = "synthetic/val.jsonl"
    max_train: int | None = None  # use the first N training records
    epoch_size: int | None = None  # records per epoch, drawn afresh from the shuffled set (None: all)
    length_buckets: int = 8  # batches of similar length: sort chunks of this many batches (1: off)
    max_val: int | None = 300


@dataclass
class MethodConfig:
    name: Method = "cot"
    latents_per_step: int = 2  # c
    use_vae: bool | None = None  # None: the method's default (its MethodDef.spec_defaults; atp: on)
    use_stop_head: bool | None = None
    use_decoder: bool | None = None  # simcot and atp: on
    decoder_mode: Literal["separate", "shared"] = "separate"
    decoder_trainable: bool = True
    beta_kl: float = 0.001
    stop_loss_positions: Literal["group_start", "all"] = "group_start"
    stop_head_detached: bool = False  # ablation: the stop head reads z.detach(), so its loss stops at the head
    decoder_weight: float = 1.0
    # latent head initialisation (ours, off by default = the reference): mu = h + f(h) with f zero at init, so
    # ATP starts from Coconut's feedback; and the initial log-variance of every latent (None: random layer)
    latent_head_residual: bool = False
    init_logvar: float | None = None
    # CODI (methods/codi.py; defaults are upstream's): latent feedback through a projector (Linear(d, p), GELU,
    # Linear(p, d), LayerNorm; p = projector_dim, null: the hidden size), and the teacher task: the same LM on
    # question + CoT + answer (CE x teacher_weight), its hidden states at the token before the answer, every layer,
    # distilled into the student's (x distill_weight; smooth_l1 or l2, divided by the teacher's std per layer)
    use_projector: bool | None = None  # None: the method's default (codi: on)
    projector_dim: int | None = None
    use_teacher: bool | None = None  # codi: on
    distill_weight: float = 1.0  # gamma: 1 upstream for GPT-2, 20 for LLaMA-1B
    distill_loss: Literal["smooth_l1", "l2"] = "smooth_l1"
    distill_div_std: bool = True
    teacher_weight: float = 1.0
    teacher_drop_last_step: bool = True  # upstream's include_last_cot False
    # CoLaR (methods/colar.py; defaults are upstream's): c drawn per batch from 1..max_compression and written in the
    # prompt, eval_compression at evaluation and RL; the latent head's loss against the next compressed embedding
    # / emb_std (mse on a sample, or nll), x latent_weight; emb_std null: measured from the model's embedding table
    # (upstream hard-codes 0.018 for LLaMA-3.2-1B, 0.12 for GPT-2). The LM head ends the chain (lm_head_stop).
    lm_head_stop: bool | None = None  # None: the method's default (colar: on)
    max_compression: int = 5
    eval_compression: int = 2
    latent_loss: Literal["mse", "nll"] = "mse"
    latent_weight: float = 1.0
    emb_std: float | None = None

    def __post_init__(self):
        if self.latents_per_step < 1:
            raise ValueError(f"latents_per_step must be >= 1, got {self.latents_per_step}")
        if self.beta_kl < 0:
            raise ValueError(f"beta_kl must be >= 0, got {self.beta_kl}")
        if self.distill_weight < 0 or self.teacher_weight < 0:
            raise ValueError("distill_weight and teacher_weight must be >= 0")
        if not 1 <= self.eval_compression <= self.max_compression:
            raise ValueError(f"eval_compression must be in 1..max_compression ({self.max_compression}), got "
                             f"{self.eval_compression}")
        if self.emb_std is not None and self.emb_std <= 0:
            raise ValueError(f"emb_std must be > 0 (or null: measured from the model), got {self.emb_std}")
        if self.projector_dim is not None and self.projector_dim < 1:
            raise ValueError(f"projector_dim must be >= 1 (or null: the hidden size), got {self.projector_dim}")


@dataclass
class CurriculumConfig:
    epochs_per_stage: int = 2
    max_latent_stage: int = 10
    stage_offset: int = 1  # 0 adds a CoT stage 0 (Coconut's recipe); ATP starts at 1
    pad_latent_to_max: bool = True
    uniform_prob: float = 0.0
    # iCoT (method icot, data/internalize.py): chain tokens removed from the front, one more every
    # round(batches per epoch / remove_per_epoch) batches; the whole chain once remove_all_beyond are scheduled
    # (null: never); a smoothing offset o ~ (1 - e^-lambda) e^(-lambda o) per record (.inf: none); the optimizer
    # state is cleared each time the count grows (reset_on_removal), as upstream's --reset_optimizer
    remove_per_epoch: float = 8.0
    remove_all_beyond: int | None = 39
    removal_lambda: float = 4.0
    remove_start_from: int = 0
    reset_on_removal: bool = True

    def __post_init__(self):
        if self.remove_per_epoch <= 0 or self.removal_lambda <= 0 or self.remove_start_from < 0:
            raise ValueError("remove_per_epoch and removal_lambda must be > 0, remove_start_from >= 0")
        if self.epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage must be >= 1, got {self.epochs_per_stage}")
        if self.max_latent_stage < 1:
            raise ValueError(f"max_latent_stage must be >= 1, got {self.max_latent_stage}")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {self.uniform_prob}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 32  # per process
    grad_accum: int = 1
    max_grad_norm: float = 0.0  # 0: no clipping (the reference)
    warmup_steps: int = 0
    # constant (the reference) or cosine decay to 10% over the run's optimizer steps (train.max_steps, or every
    # epoch); never over time: train.max_minutes is a safety stop
    schedule: Literal["constant", "cosine"] = "constant"
    reset_each_epoch: bool = True  # the reference re-creates the optimizer every epoch

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")


@dataclass
class TrainConfig:
    epochs: int = 25
    max_steps: int | None = None  # stop after this many optimizer steps (None: run every epoch)
    max_minutes: float | None = None  # wall-clock safety stop; stops cleanly with a final checkpoint
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # false: PyTorch's cuDNN attention kernel is switched off (SDPA falls back to flash / memory-efficient). Its
    # backward returns NaN gradients with an explicit attn_mask on H100/H200 when the key length is 64 mod 128
    # (pytorch#196678, torch 2.11+); our left-padded prefixes always pass a mask, and a bf16 CoT-SFT run on an H200
    # went non-finite at step 182 and 152 (results/gpu/2026-11-28-h200/). No effect on CPU or in fp32.
    cudnn_attention: bool = False
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: at each epoch end only)
    # false: no resumable step checkpoints (optimizer state: 16 bytes per trainable parameter, ~20 GB at 1B with
    # a separate decoder); best/ and epoch-N/ then hold weights only; final/ is always written
    save_checkpoints: bool = True
    keep_last: int = 2
    keep_epochs: list[int] = field(default_factory=list)  # also keep RUN/epoch-N after these (1-based) epochs
    log_every: int = 10
    eval_every_epoch: bool = True  # val accuracy after each epoch; the best is kept as best/
    # experiment trackers, through accelerate (metrics.jsonl is always written): tensorboard (RUN/tb), wandb,
    # mlflow, or any other tracker accelerate knows; [] for none. wandb/mlflow: pip install 'atp-latent[wandb]'
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise ValueError(f"report_to: unknown tracker {unknown[0]!r} (known: {', '.join(TRACKERS)})")


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_new_tokens: int = 16  # latent methods and No-CoT (METHOD.md §9)
    cot_max_new_tokens: int = 160  # CoT-SFT writes its steps too
    latent_sample: bool = False  # sample latents from N(mu, sigma) instead of mu
    seeds: int = 1


@dataclass
class RLConfig:
    """GRPO on the latent policy (METHOD.md §8); defaults are the paper's."""

    questions_per_step: int = 16  # B, per process
    group_size: int = 8  # G rollouts per question
    minibatch_size: int = 16  # the B*G buffer is iterated once in shuffled minibatches
    lr: float = 1e-6
    weight_decay: float = 0.01
    clip: float = 0.2
    logratio_clamp: float = 3.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # answer-token sampling
    # latent exploration k: rollouts sample z ~ N(mu, (k sigma)^2) and score that density (1.0: the paper). Like the
    # answer temperature it widens the policy that is sampled and trained; greedy evaluation (z = mu) is unchanged
    latent_temperature: float = 1.0
    max_new_tokens: int = 16
    steps: int | None = None  # RL steps; None: one epoch over the training set
    reward: Literal["full", "coherence_only"] = "full"
    w_acc: float | None = None  # None: 1.0 (full) / 0.0 (coherence_only)
    w_fmt: float | None = None  # None: 0.5
    w_coh: float | None = None  # None: 0.1 (full) / 1.0 (coherence_only)
    coherence_mode: Literal["strict", "reference"] = "strict"
    coherence_max_tokens: int = 16
    val_every: int = 10  # RL steps between validations (best checkpoint kept by val accuracy)
    # A validated policy replaces best/ when its val accuracy is the highest so far and, against the start policy,
    # a one-sided sign test over the val problems the two answer differently gives p <= best_max_p. 1.0: any
    # higher accuracy (the reference keeps the best val checkpoint); 0.05: RL must beat its start beyond val noise.
    # The test is applied afresh at every validation, with no multiple-testing correction: over a run the chance
    # that a policy no better than its start passes is above best_max_p. best/ is no verdict on RL (see the bench).
    best_max_p: float = 1.0
    checkpoint_every: int = 10
    # --- knobs for GRPO on sparse rewards (all off by default: the paper's recipe) ---
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 10% of lr over rl.steps
    warmup_steps: int = 0  # linear warmup of the RL learning rate
    # dynamic sampling (DAPO): roll out `oversample` x questions_per_step questions and keep questions_per_step
    # groups, those whose rewards differ first (a group of equal rewards carries no signal)
    dynamic_sampling: bool = False
    oversample: int = 2
    loss_norm: Literal["sequence", "token"] = "sequence"  # sequence: mean per trajectory then batch (paper);
    # token: one mean over every position of the minibatch (latents / answer tokens), as in DAPO
    kl_coef: float = 0.0  # > 0: k3 KL penalty to the RL start policy (a frozen copy; the paper uses none)
    # sum: the latent log-prob sums the Gaussian log-density over all d dimensions (paper), so its ratio scales
    # with the hidden size; mean: per-dimension mean (docs/deviations.md)
    latent_logratio: Literal["sum", "mean"] = "sum"
    # gaussian: rollouts sample z ~ N(mu, sigma^2) and the latent stream scores its density (paper); mean: z = mu,
    # the latents are no action of the policy (its actions: stop decisions and answer tokens), and the update has no
    # Gaussian term, whose gradient is noise where the sampled latents do not change outcomes (docs/deviations.md)
    latent_policy: Literal["gaussian", "mean"] = "gaussian"
    train_lm: bool = True  # false: RL updates only the latent and stop heads, the language model stays the start's
    # divide: each rollout's reward is divided by its number of latents (CoLaR-RL's punish_latent_length)
    length_penalty: Literal["none", "divide"] = "none"

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are normalised within a group), got {self.group_size}")
        if self.questions_per_step < 1 or self.minibatch_size < 1:
            raise ValueError("questions_per_step and minibatch_size must be >= 1")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {self.clip}")
        if not 0 < self.best_max_p <= 1:
            raise ValueError(f"best_max_p must be in (0, 1], got {self.best_max_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.latent_temperature <= 0:
            raise ValueError(f"latent_temperature must be > 0, got {self.latent_temperature}")
        if self.oversample < 1 or self.kl_coef < 0 or self.warmup_steps < 0:
            raise ValueError("oversample must be >= 1, kl_coef and warmup_steps >= 0")
        if self.latent_policy == "mean" and (self.latent_temperature != 1.0 or self.latent_logratio != "sum"):
            raise ValueError("latent_policy=mean rolls out z = mu and scores no latent density: latent_temperature "
                             "and latent_logratio apply to latent_policy=gaussian only")


@dataclass
class RunConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    output_dir: str = "runs"
    name: str | None = None


def load_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (optional, with its `defaults:` chain) + dotted overrides -> validated RunConfig, composed with
    OmegaConf over the RunConfig schema (see configtools). Raises ConfigError with one line."""
    return compose(RunConfig, path or None, overrides or ())


__all__ = ["RunConfig", "load_config", "ConfigError", "to_dict"]
