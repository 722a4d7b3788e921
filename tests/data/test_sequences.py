"""Curriculum sequences, labels and decoder targets (METHOD.md §2-§3, §6)."""

import json
import random

import pytest

from atp_latent.data.formats import load_records
from atp_latent.data.records import Problem
from atp_latent.data.sequences import IGNORE, Curriculum, SequenceBuilder, collate, sample_stage, step_text
from atp_latent.modeling.tokenizer import build_word_tokenizer, latent_token_ids

P = Problem(question="Ann has 3 cats and 4 dogs.", steps=["3+4=7", "7*2=14", "14-5=9"], answer="9")


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer([P.question, "<<3+4=7>>\n### 9"])


def text(tok, ids):
    return tok.decode([i for i in ids if i != IGNORE], skip_special_tokens=False)


def labelled(tok, ex):
    return text(tok, [t for t, lab in zip(ex.suffix, ex.labels) if lab != IGNORE])


def test_curriculum_schedule():
    cur = Curriculum(latents_per_step=2, epochs_per_stage=2, max_latent_stage=3, stage_offset=1)
    assert [cur.stage(e) for e in range(6)] == [1, 1, 2, 2, 3, 3]
    assert cur.plan(n_steps=3, stage=1) == (1, 1)
    assert cur.plan(n_steps=2, stage=3) == (2, 3)  # surplus group: more latents than steps
    assert cur.plan(n_steps=5, stage=4) == (5, 3)  # beyond max: all steps removed, padded to max
    nopad = Curriculum(max_latent_stage=3, pad_latent_to_max=False)
    assert nopad.plan(n_steps=2, stage=4) == (2, 2)
    assert Curriculum(max_latent_stage=3, latents_per_step=2).eval_slots == 6


def test_cot_stage_zero_keeps_markers_and_steps(tok):
    b = SequenceBuilder(tok, "cot", Curriculum(latents_per_step=2))
    ex = b.build(P, stage=0)
    s, _, e = latent_token_ids(tok)
    assert ex.prefix[0] == tok.bos_token_id and ex.prefix[-1] == s
    assert ex.suffix[0] == e and ex.labels[0] == IGNORE and ex.suffix[-1] == tok.eos_token_id
    assert ex.n_slots == 0
    assert labelled(tok, ex) == "<<3+4=7>>\n<<7*2=14>>\n<<14-5=9>>\n### 9<|eos|>"


def test_nocot_drops_every_step(tok):
    ex = SequenceBuilder(tok, "nocot", Curriculum()).build(P, stage=5)
    assert ex.n_slots == 0 and labelled(tok, ex) == "### 9<|eos|>"


@pytest.mark.parametrize("stage,slots,rest", [
    (1, 2, "<<7*2=14>>\n<<14-5=9>>\n### 9<|eos|>"),
    (2, 4, "<<14-5=9>>\n### 9<|eos|>"),
    (3, 6, "### 9<|eos|>"),
    (4, 8, "### 9<|eos|>"),  # beyond max (3 < 4 = max): stage 4 <= max_latent_stage 4
    (9, 8, "### 9<|eos|>"),  # beyond max: padded to max_latent_stage * c
])
def test_latent_stages(tok, stage, slots, rest):
    cur = Curriculum(latents_per_step=2, max_latent_stage=4)
    ex = SequenceBuilder(tok, "coconut", cur).build(P, stage)
    assert ex.n_slots == slots and ex.n_active == slots  # Coconut: every slot is active
    assert labelled(tok, ex) == rest


def test_surplus_latents_masked_with_stop_head(tok):
    cur = Curriculum(latents_per_step=2, max_latent_stage=4)
    ex = SequenceBuilder(tok, "atp", cur, mask_surplus=True).build(P, stage=9)
    assert ex.n_slots == 8 and ex.n_active == 6  # 3 steps * c active, one surplus group masked


def test_decoder_targets(tok):
    cur = Curriculum(latents_per_step=2, max_latent_stage=2)
    b = SequenceBuilder(tok, "atp", cur, mask_surplus=True)
    # Beyond max with 3 steps and 2 groups: group 0 = step 0, the last group merges steps 1..2.
    ex = b.build(P, stage=3)
    assert [text(tok, t) for t in ex.group_targets] == ["<<3+4=7>><|eos|>", "<<7*2=14>>\n<<14-5=9>><|eos|>"]
    # At stage 2 <= max, the second group is one step only.
    assert text(tok, b.build(P, stage=2).group_targets[1]) == "<<7*2=14>><|eos|>"
    # A record with fewer steps than groups: the surplus group is eos-only.
    short = Problem(question=P.question, steps=["3+4=7"], answer="7")
    assert [text(tok, t) for t in b.build(short, stage=3).group_targets] == ["<<3+4=7>><|eos|>", "<|eos|>"]


def test_collate_shapes_and_activity(tok):
    cur = Curriculum(latents_per_step=2, max_latent_stage=4)
    b = SequenceBuilder(tok, "atp", cur, mask_surplus=True)
    short = Problem(question="Ann has 3 cats.", steps=["3+4=7"], answer="7")
    batch = collate([b.build(P, 2), b.build(short, 2)], tok.pad_token_id)
    assert batch["n_slots"].tolist() == [4, 4]
    assert batch["active"].tolist() == [[True] * 4, [True, True, False, False]]
    assert batch["prefix_mask"][1, 0] == 0 and batch["prefix_mask"][:, -1].all()  # left padding
    assert batch["dec_rows"].tolist() == [0, 0, 1, 1] and batch["dec_groups"].tolist() == [0, 1, 0, 1]
    assert (batch["labels"][batch["suffix_mask"] == 0] == IGNORE).all()


def ids_of(tok, tokens):
    """Token ids from a hand-written token list (one vocabulary lookup each, independent of the encoder)."""
    ids = tok.convert_tokens_to_ids(tokens)
    assert tok.unk_token_id not in ids
    return ids


def test_merged_last_group_is_newline_joined_by_hand(tok):
    # max_latent_stage 2, stage 3 > max: all 3 steps latent; group 1 (the last) merges steps 1..2 with "\n".
    b = SequenceBuilder(tok, "atp", Curriculum(latents_per_step=2, max_latent_stage=2), mask_surplus=True)
    targets = b.build(P, stage=3).group_targets
    step0 = list("<<3+4=7>>")
    merged = list("<<7*2=14>>") + ["\n"] + list("<<14-5=9>>")
    assert targets == [ids_of(tok, step0) + [tok.eos_token_id], ids_of(tok, merged) + [tok.eos_token_id]]


BRACKETED = Problem(question=P.question, steps=["<<3+4=7>>", "<<7*2=14>>", "<<14-5=9>>"], answer="9")


def test_step_text_is_idempotent():
    assert step_text("16-3-4=9") == "<<16-3-4=9>>"
    assert step_text("<<16-3-4=9>>") == "<<16-3-4=9>>"
    assert step_text(step_text("16-3-4=9")) == "<<16-3-4=9>>"
    assert step_text(" << 16-3-4=9 >> ") == "<<16-3-4=9>>"


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_bracketed_steps_get_one_pair_of_brackets(tok, stage):
    # A Problem built by hand with bracketed steps writes exactly the sequences of the bare one.
    cur = Curriculum(latents_per_step=2, max_latent_stage=2)
    for method in ("cot", "atp"):
        b = SequenceBuilder(tok, method, cur, mask_surplus=True)
        got, want = b.build(BRACKETED, stage), b.build(P, stage)
        assert (got.suffix, got.labels, got.group_targets) == (want.suffix, want.labels, want.group_targets)
    cot = SequenceBuilder(tok, "cot", cur).build(BRACKETED, 0)
    assert labelled(tok, cot) == "<<3+4=7>>\n<<7*2=14>>\n<<14-5=9>>\n### 9<|eos|>"
    assert "<<<<" not in labelled(tok, cot)


def test_bracketed_steps_through_the_loader(tok, tmp_path):
    # GSM8k-Aug / iCoT JSON copies store bracketed steps: the loader strips them, the builder adds one pair.
    f = tmp_path / "aug.jsonl"
    f.write_text(json.dumps({"question": P.question, "steps": BRACKETED.steps, "answer": "9"}) + "\n")
    (p,) = load_records(f)
    assert p.steps == ["3+4=7", "7*2=14", "14-5=9"]
    ex = SequenceBuilder(tok, "cot", Curriculum()).build(p, 0)
    body = ids_of(tok, [*"<<3+4=7>>", "\n", *"<<7*2=14>>", "\n", *"<<14-5=9>>", "\n", "#", "#", "#", "\u2581", "9"])
    assert ex.suffix[1:] == body + [tok.eos_token_id]


def test_uniform_stage_sampling_is_per_record():
    # uniform_prob 1: a record with n steps gets a stage drawn uniformly from 0..n (inclusive), whatever max is.
    cur = Curriculum(max_latent_stage=10, uniform_prob=1.0)
    rng = random.Random(0)
    for n in (0, 1, 3):
        draws = [sample_stage(cur, 0, rng, n) for _ in range(600)]
        assert set(draws) == set(range(n + 1))
        assert min(draws.count(k) for k in range(n + 1)) > 600 / (n + 1) / 2  # roughly uniform
    # uniform_prob 0: the epoch's stage, regardless of the record.
    assert {sample_stage(Curriculum(uniform_prob=0.0), 4, rng, 7) for _ in range(10)} == {3}
    # In between: about that share of records is redrawn (here the epoch's stage 5 is out of 0..2).
    half = Curriculum(epochs_per_stage=1, stage_offset=0, uniform_prob=0.5)
    draws = [sample_stage(half, 5, rng, 2) for _ in range(1000)]
    assert 400 < sum(d != 5 for d in draws) < 600
