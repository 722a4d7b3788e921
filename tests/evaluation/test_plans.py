"""A rollout's plan (evaluation/plans.py): CoT's written steps, a step decoder's reading of each latent group, None
for a method without one; and evaluate(plans=True) puts them on its rows."""

import torch

from atp_latent.data.records import Problem
from atp_latent.data.sequences import builder_for, left_pad
from atp_latent.evaluation.evaluate import evaluate
from atp_latent.evaluation.plans import has_plan, read_plans, steps_in
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer

PROBLEMS = [Problem("Ann has 3 cats and gets 4 more. How many cats?", ["3+4=7"], "7"),
            Problem("Bob has 2 bags of 5 pens and loses 1. How many pens?", ["2*5=10", "10-1=9"], "9")]


def test_steps_in_by_hand():
    assert steps_in("<<16-3=13>>\n<<13*2=26>>\n### 26") == ["16-3=13", "13*2=26"]
    assert steps_in("<< 2 + 3 = 5 >>x<<>>") == ["2 + 3 = 5"]  # an empty pair is no step
    assert steps_in("### 7") == []


def make(method, **kw):
    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method(method, latents_per_step=1, max_latent_stage=2, **kw)
    return LatentReasoner(build_tiny_model("llama-tiny", tok), spec).eval(), tok


@torch.no_grad()
def test_plans_per_method():
    """CoT: the steps of its text; SIM-CoT: each latent group decoded greedily by the step decoder (the same text
    decode_groups gives), concatenated; Coconut: no plan."""
    cot, tok = make("cot")
    assert has_plan(cot) and read_plans(cot, None, ["<<1+2=3>>\n### 3", "### 4"], tok) == [["1+2=3"], []]
    coconut, _ = make("coconut")
    assert not has_plan(coconut)
    _, rows = evaluate(coconut, builder_for(tok, coconut.spec), PROBLEMS, max_new_tokens=3, progress=False, plans=True)
    assert [r["plan"] for r in rows] == [None, None]
    simcot, tok = make("simcot")
    b = builder_for(tok, simcot.spec)
    _, rows = evaluate(simcot, b, PROBLEMS, max_new_tokens=3, progress=False, plans=True)
    ids, mask = left_pad([b.eval_prompt(p.question)[0] for p in PROBLEMS], tok.pad_token_id)
    state, _ = simcot.answer(ids, mask, torch.tensor([2, 2]), b.end_id, tok.eos_token_id, tok.pad_token_id, 3)
    for i, r in enumerate(rows):
        texts = []
        for g in range(2):
            z = simcot.decoder_inputs(state.z, torch.tensor([i]), torch.tensor([g]))
            row = simcot.decode_groups(z, tok.eos_token_id, tok.pad_token_id, 24)[0].tolist()
            texts.append(tok.decode(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row))
        assert r["plan"] == steps_in("".join(texts))
