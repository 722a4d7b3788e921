"""Token sequences per method and curriculum stage (METHOD.md §2-§3), and batching.

Every method uses one layout; methods differ only in how many steps are replaced by latent slots:

    prefix  = [bos] question "\n" <|start-latent|>
    slots   = <|latent|> x n_slots           (filled by the latent engine, never by token ids)
    suffix  = <|end-latent|> "<<step>>\n" ... "### " answer [eos]

Labels are the suffix tokens after <|end-latent|>. CoT-SFT keeps every step (stage 0, no slots); No-CoT
drops every step and has no slots; iCoT drops the chain's first k tokens (its "stage" is k) and has no slots;
CoLaR fills one slot per c consecutive chain tokens (its "stage" is c, written in the prefix before
<|start-latent|>) and has CE labels on the slots too. The latent markers are in every method's sequences, so
moving from the CoT stage to stage 1 changes only what sits between them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from atp_latent.data.records import Problem, bare_step
from atp_latent.modeling.methods import get_method
from atp_latent.modeling.tokenizer import latent_token_ids

IGNORE = -100
# CoLaR's prompt names its compression factor; symbols and digits only, which every tokenizer here carries (upstream:
# "(Thinking speed: {c})")
SPEED_TEMPLATE = "({c})\n"


@dataclass(frozen=True)
class Curriculum:
    """The Coconut schedule with the ATP knobs. `latents_per_step` is c."""

    latents_per_step: int = 2
    epochs_per_stage: int = 2
    max_latent_stage: int = 10
    stage_offset: int = 1
    pad_latent_to_max: bool = True
    uniform_prob: float = 0.0

    def stage(self, epoch: int) -> int:
        return epoch // self.epochs_per_stage + self.stage_offset

    def plan(self, n_steps: int, stage: int) -> tuple[int, int]:
        """(steps removed from the text, latent groups) for a record with n_steps steps at `stage`."""
        if stage <= self.max_latent_stage:
            return min(stage, n_steps), stage
        groups = self.max_latent_stage if self.pad_latent_to_max else min(n_steps, self.max_latent_stage)
        return n_steps, groups

    @property
    def eval_slots(self) -> int:
        return self.max_latent_stage * self.latents_per_step


@dataclass
class Example:
    prefix: list[int]
    suffix: list[int]  # starts with <|end-latent|>
    labels: list[int]  # aligned with suffix; IGNORE where no loss
    n_slots: int  # latent slots
    n_active: int  # slots attended to (surplus slots are masked when the stop head is trained)
    group_targets: list[list[int]] = field(default_factory=list)  # decoder target per latent group
    answer: str = ""
    # CODI's teacher task (SequenceBuilder(teacher=True)), after the same prefix: <|end-latent|> + every step (but
    # the last, with teacher_drop_last_step) + answer, labels on steps and answer; the distillation position (the
    # token before the answer's first token) in it and in `suffix`
    teacher: list[int] = field(default_factory=list)
    teacher_labels: list[int] = field(default_factory=list)
    teacher_pos: int = -1
    student_pos: int = -1
    chain_left: int = 0  # iCoT: chain tokens still written (0: fully internalized)
    # CoLaR (chain "compressed"): the chain's tokens in groups of c (the last may be shorter), one per latent slot,
    # and the CE label predicted before each group (one of its tokens, drawn) plus <|end-latent|> after the last
    comp_groups: list[list[int]] = field(default_factory=list)
    comp_labels: list[int] = field(default_factory=list)


def step_text(step: str) -> str:
    """A step as written in sequences, `<<16-3-4=9>>`; idempotent, so an already bracketed step keeps one pair."""
    return f"<<{bare_step(step)}>>"


class SequenceBuilder:
    """Turns Problems into Examples for one method; the tokenizer is the only state."""

    def __init__(self, tokenizer, method: str, curriculum: Curriculum, mask_surplus: bool = False,
                 teacher: bool = False, teacher_drop_last_step: bool = True, eval_compression: int = 1):
        self.tok = tokenizer
        self.eval_compression = eval_compression  # CoLaR: the c its evaluation prompt asks for
        self.teacher = teacher  # also build CODI's teacher sequence and the distillation positions
        self.teacher_drop_last_step = teacher_drop_last_step
        self.method = method
        self.method_def = get_method(method)  # its `chain` says what the sequence keeps of the steps
        self.cur = curriculum
        self.mask_surplus = mask_surplus
        self.start_id, self.latent_id, self.end_id = latent_token_ids(tokenizer)
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def prefix(self, question: str, compression: int | None = None) -> list[int]:
        """[bos] question "\n" [speed] <|start-latent|>; CoLaR's prompts say the compression factor c (`speed`)."""
        speed = self.encode(SPEED_TEMPLATE.format(c=compression)) if compression is not None else []
        return self.bos + self.encode(question.strip() + "\n") + speed + [self.start_id]

    def build(self, p: Problem, stage: int, rng: random.Random | None = None) -> Example:
        """The training sequence of `p` at `stage` (CoLaR: the compression factor c; `rng` draws its group labels)."""
        n = len(p.steps)
        chain = self.method_def.chain
        if chain == "internalize":
            return self.build_internalized(p, stage)
        if chain == "compressed":
            return self.build_compressed(p, stage, rng if rng is not None else random.Random(0))
        if chain == "text":
            removed, groups = 0, 0
        elif chain == "none":
            removed, groups = n, 0
        else:  # curriculum
            removed, groups = self.cur.plan(n, stage)
        c = self.cur.latents_per_step
        rest = "".join(step_text(s) + "\n" for s in p.steps[removed:]) + "### " + p.answer.strip()
        body = self.encode(rest) + [self.eos_id]
        suffix = [self.end_id] + body
        labels = [IGNORE] + body
        n_slots = groups * c
        n_active = min(groups, n) * c if self.mask_surplus else n_slots
        ex = Example(
            self.prefix(p.question),
            suffix,
            labels,
            n_slots,
            n_active,
            self.group_targets(p.steps, removed, groups, stage),
            p.answer,
        )
        if self.teacher:
            self.add_teacher(ex, p, rest)
        return ex

    def before_answer(self, rest: str, answer: str) -> tuple[list[int], int]:
        """`rest` (ending with `answer`) encoded, and the index of the token right before the answer's first token:
        the first token whose characters reach into the answer, found from the tokenizer's offsets, minus one.
        Whatever the tokenizer makes of "### N" (GPT-2: "###", " N"; LLaMA-3: "###", " ", "N"), no per-model rule
        (upstream adds 1 for LLaMA and Qwen)."""
        enc = self.tok(rest, add_special_tokens=False, return_offsets_mapping=True)
        start = len(rest) - len(answer)
        first = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > start), len(enc["input_ids"]))
        return enc["input_ids"], max(first - 1, 0)

    def add_teacher(self, ex: Example, p: Problem, rest: str) -> None:
        """CODI: the teacher's continuation of the prefix (CoT's suffix, without the last step when
        teacher_drop_last_step) with its labels, and the distillation positions in it and in the student's suffix."""
        answer = p.answer.strip()
        _, ex.student_pos = self.before_answer(rest, answer)
        ex.student_pos += 1  # both start with <|end-latent|>
        steps = p.steps[:-1] if self.teacher_drop_last_step else p.steps
        body, pos = self.before_answer("".join(step_text(s) + "\n" for s in steps) + "### " + answer, answer)
        body = body + [self.eos_id]
        ex.teacher = [self.end_id] + body
        ex.teacher_labels = [IGNORE] + body
        ex.teacher_pos = 1 + pos

    def chain_ids(self, p: Problem) -> list[int]:
        """The written chain's tokens, every step: what iCoT removes from the front."""
        return self.encode("".join(step_text(s) + "\n" for s in p.steps))

    def build_internalized(self, p: Problem, removed_tokens: int) -> Example:
        """iCoT: the chain without its first `removed_tokens` tokens, then the answer. The chain and the answer
        are encoded apart, so the removed count is in the chain's own tokens (at 0 this is CoT's sequence up to
        how a tokenizer would merge across the chain's last newline and "###")."""
        kept = self.chain_ids(p)[removed_tokens:]
        body = kept + self.encode("### " + p.answer.strip()) + [self.eos_id]
        return Example(self.prefix(p.question), [self.end_id] + body, [IGNORE] + body, 0, 0, [], p.answer,
                       chain_left=len(kept))

    def build_compressed(self, p: Problem, c: int, rng: random.Random) -> Example:
        """CoLaR: the written chain's tokens in consecutive groups of c from its first token (the last group may be
        shorter; upstream pads it on the right), one latent slot each, then the answer as in every method. The label
        predicted before group k (at <|start-latent|> for the first) is one of its tokens drawn uniformly, and the
        last group predicts <|end-latent|>: the LM head learns to end the chain."""
        if c < 1:
            raise ValueError(f"compression factor must be >= 1, got {c}")
        chain = self.chain_ids(p)
        groups = [chain[i: i + c] for i in range(0, len(chain), c)]
        body = self.encode("### " + p.answer.strip()) + [self.eos_id]
        return Example(self.prefix(p.question, c), [self.end_id] + body, [IGNORE] + body, len(groups), len(groups),
                       [], p.answer, comp_groups=groups,
                       comp_labels=[g[rng.randrange(len(g))] for g in groups] + [self.end_id])

    def group_targets(self, steps: list[str], removed: int, groups: int, stage: int) -> list[list[int]]:
        """Decoder target per latent group: one step each; the last of max_latent_stage groups takes every
        remaining step, newline-separated as in the reference, when all steps are latent; a group beyond the
        record's steps is eos-only."""
        out = []
        last = self.cur.max_latent_stage - 1
        for g in range(groups):
            if g < removed:
                merged = g == last and stage > self.cur.max_latent_stage
                text = "\n".join(step_text(s) for s in (steps[g:] if merged else [steps[g]]))
                out.append(self.encode(text) + [self.eos_id])
            else:
                out.append([self.eos_id])
        return out

    def eval_prompt(self, question: str) -> tuple[list[int], int]:
        """Prefix and number of latent slots at evaluation (max_latent_stage * c for latent methods)."""
        slots = self.cur.eval_slots if self.method_def.latent else 0
        compression = self.eval_compression if self.method_def.chain == "compressed" else None
        return self.prefix(question, compression), slots


def sample_stage(cur: Curriculum, epoch: int, rng: random.Random, n_steps: int) -> int:
    """The epoch's stage, or with probability uniform_prob a uniformly random one in 0..n_steps (inclusive),
    n_steps being the record's own number of steps (as Coconut/ATP's reference draws it)."""
    if cur.uniform_prob > 0 and rng.random() < cur.uniform_prob:
        return rng.randint(0, n_steps)
    return cur.stage(epoch)


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(
    seqs: list[list[int]], pad: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    width = width or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch: left-padded prefixes, slot counts and activity, right-padded suffixes, decoder targets."""
    prefix_ids, prefix_mask = left_pad([e.prefix for e in examples], pad_id)
    suffix_ids, suffix_mask = right_pad([e.suffix for e in examples], pad_id)
    labels, _ = right_pad([e.labels for e in examples], IGNORE)
    n_slots = torch.tensor([e.n_slots for e in examples], dtype=torch.long)
    L = int(n_slots.max())
    active = torch.arange(L)[None] < torch.tensor([e.n_active for e in examples])[:, None]
    batch = {
        "prefix_ids": prefix_ids,
        "prefix_mask": prefix_mask,
        "n_slots": n_slots,
        "active": active,
        "suffix_ids": suffix_ids,
        "suffix_mask": suffix_mask,
        "labels": labels,
    }
    # Decoder targets flattened over (row, group) pairs; groups beyond a row's slots have none.
    rows, groups, targets = [], [], []
    for i, e in enumerate(examples):
        for g, t in enumerate(e.group_targets):
            rows.append(i)
            groups.append(g)
            targets.append(t)
    if examples and all(e.teacher for e in examples):  # CODI's teacher task, right-padded
        batch["teacher_ids"], batch["teacher_mask"] = right_pad([e.teacher for e in examples], pad_id)
        batch["teacher_labels"], _ = right_pad([e.teacher_labels for e in examples], IGNORE)
        batch["teacher_pos"] = torch.tensor([e.teacher_pos for e in examples], dtype=torch.long)
        batch["student_pos"] = torch.tensor([e.student_pos for e in examples], dtype=torch.long)
    if examples and all(e.comp_labels for e in examples):  # CoLaR: [B, K, c] groups, [B, K + 1] labels
        K = max(len(e.comp_groups) for e in examples)
        c = max((len(g) for e in examples for g in e.comp_groups), default=1)
        batch["comp_ids"] = torch.full((len(examples), K, c), pad_id, dtype=torch.long)
        batch["comp_mask"] = torch.zeros((len(examples), K, c), dtype=torch.long)
        for i, e in enumerate(examples):
            for k, g in enumerate(e.comp_groups):
                batch["comp_ids"][i, k, : len(g)] = torch.tensor(g)
                batch["comp_mask"][i, k, : len(g)] = 1
        batch["comp_labels"], _ = right_pad([e.comp_labels for e in examples], IGNORE, K + 1)
    if targets:
        dec_ids, dec_mask = right_pad(targets, pad_id)
        batch.update(
            dec_rows=torch.tensor(rows), dec_groups=torch.tensor(groups), dec_ids=dec_ids, dec_mask=dec_mask
        )
    return batch


def builder_for(tokenizer, spec) -> SequenceBuilder:
    """The evaluation-time builder of a trained reasoner (its method, c and max_latent_stage)."""
    cur = Curriculum(latents_per_step=spec.latents_per_step, max_latent_stage=spec.max_latent_stage)
    return SequenceBuilder(tokenizer, spec.method, cur, mask_surplus=spec.use_stop_head,
                           eval_compression=spec.eval_compression)
