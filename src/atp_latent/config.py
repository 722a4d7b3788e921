"""Run configuration: one dataclass per concern, loaded from YAML with dotted overrides (`--set optim.lr=3e-4`).

Defaults are the paper recipe (METHOD.md §11) where the method defines one; the quickstart and benchmark
configs under configs/ shrink them for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from atp_latent.configtools import ConfigError, apply_overrides, from_dict, load_yaml_dict, to_dict

Method = Literal["cot", "nocot", "coconut", "simcot", "atp", "atp-rl"]


@dataclass
class ModelConfig:
    name_or_path: str | None = None  # HF id or local path; None builds a tiny model from `preset`
    preset: str = "llama-tiny"  # tiny randomly initialised model (see modeling/factory.py)
    init_from: str | None = None  # checkpoint directory to start from (e.g. a CoT-SFT run's final/)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_vocab: int = 4096  # tiny tokenizer only: vocabulary cap when built from the training corpus


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
    use_vae: bool | None = None  # None: the method's default (atp: on)
    use_stop_head: bool | None = None
    use_decoder: bool | None = None  # simcot and atp: on
    decoder_mode: Literal["separate", "shared"] = "separate"
    decoder_trainable: bool = True
    beta_kl: float = 0.001
    stop_loss_positions: Literal["group_start", "all"] = "group_start"
    decoder_weight: float = 1.0

    def __post_init__(self):
        if self.latents_per_step < 1:
            raise ValueError(f"latents_per_step must be >= 1, got {self.latents_per_step}")
        if self.beta_kl < 0:
            raise ValueError(f"beta_kl must be >= 0, got {self.beta_kl}")


@dataclass
class CurriculumConfig:
    epochs_per_stage: int = 2
    max_latent_stage: int = 10
    stage_offset: int = 1  # 0 adds a CoT stage 0 (Coconut's recipe); ATP starts at 1
    pad_latent_to_max: bool = True
    uniform_prob: float = 0.0

    def __post_init__(self):
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
    # constant (the reference) or cosine decay to 10% over the run; with train.max_minutes the run's
    # progress is the larger of its step and time fractions, so a time-budgeted run still ends decayed
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
    max_minutes: float | None = None  # wall-clock budget; stops cleanly with a final checkpoint
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    checkpoint_every: int = 0  # optimizer steps between checkpoints (0: at each epoch end only)
    # false: no resumable step checkpoints (optimizer state: 16 bytes per trainable parameter, ~20 GB at 1B with
    # a separate decoder); best/ and epoch-N/ then hold weights only; final/ is always written
    save_checkpoints: bool = True
    keep_last: int = 2
    keep_epochs: list[int] = field(default_factory=list)  # also keep RUN/epoch-N after these (1-based) epochs
    log_every: int = 10
    eval_every_epoch: bool = True  # val accuracy after each epoch; the best is kept as best/

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


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
    max_new_tokens: int = 16
    steps: int | None = None  # RL steps; None: one epoch over the training set
    reward: Literal["full", "coherence_only"] = "full"
    w_acc: float | None = None  # None: 1.0 (full) / 0.0 (coherence_only)
    w_fmt: float | None = None  # None: 0.5
    w_coh: float | None = None  # None: 0.1 (full) / 1.0 (coherence_only)
    coherence_mode: Literal["strict", "reference"] = "strict"
    coherence_max_tokens: int = 16
    val_every: int = 10  # RL steps between validations (best checkpoint kept by val accuracy)
    checkpoint_every: int = 10

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are normalised within a group), got {self.group_size}")
        if self.questions_per_step < 1 or self.minibatch_size < 1:
            raise ValueError("questions_per_step and minibatch_size must be >= 1")
        if not 0 < self.clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {self.clip}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


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
    """YAML file (optional) + dotted overrides -> validated RunConfig. Raises ConfigError with one line."""
    data = load_yaml_dict(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data, path=path or "<config>")


__all__ = ["RunConfig", "load_config", "ConfigError", "to_dict"]
