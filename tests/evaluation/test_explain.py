"""explain on c = 2 checkpoints whose stop head fires: the engine's filled length is then g*c + 1 (the group-start
slot where the last row stopped is appended, inactive), and explain must read the groups before it."""

import pytest
import torch
from torch import nn

from atp_latent.data.sequences import builder_for, left_pad
from atp_latent.evaluation.explain import explain, format_explanation
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer

QUESTIONS = ["Ann has 3 cats and 4 dogs. How many pets?", "Bob has 2 bags of 5 pens. How many pens?"]


class StopAtCall(nn.Module):
    """A stop head that says "continue" on its first `n_continue` calls (one call per group start of the batch),
    then "stop" for every row."""

    def __init__(self, n_continue: int):
        super().__init__()
        self.n_continue, self.calls = n_continue, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        stop = self.calls >= self.n_continue
        self.calls += 1
        logits = torch.zeros(z.shape[0], 2, dtype=z.dtype, device=z.device)
        logits[:, 1 if stop else 0] = 5.0
        return logits


def model_and_builder():
    tok = build_word_tokenizer(QUESTIONS + ["<<3+4=7>>\n### 7"])
    lm = build_tiny_model("llama-tiny", tok, seed=0)
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("atp", latents_per_step=2, max_latent_stage=3)
    return LatentReasoner(lm, spec), builder_for(tok, spec), tok


@pytest.mark.parametrize("n_continue", [0, 1, 2])
def test_explain_when_every_question_stops_early(n_continue):
    model, builder, tok = model_and_builder()
    model.stop_head = StopAtCall(n_continue)
    got = explain(model, builder, QUESTIONS)
    # the same greedy fill by hand: per-latent sigma, averaged over each group's 2 latents
    model.stop_head = StopAtCall(n_continue)
    prompts = [builder.eval_prompt(q) for q in QUESTIONS]
    ids, mask = left_pad([p for p, _ in prompts], tok.pad_token_id)
    with torch.no_grad():
        state = model.fill(ids, mask, torch.tensor([s for _, s in prompts]))
    assert state.z.shape[1] == 2 * n_continue + 1  # the stopped group's start slot is appended
    per_latent = torch.exp(0.5 * state.logvar.float()).mean(-1)
    for i, e in enumerate(got):
        assert e["latents"] == 2 * n_continue
        assert e["stopped_at_group"] == n_continue
        assert len(e["steps"]) == n_continue
        want = [float(per_latent[i, 2 * g: 2 * g + 2].mean()) for g in range(n_continue)]
        assert e["sigma"] == pytest.approx(want, rel=1e-5)
        assert "stopped before group" in format_explanation(e, c=2)


def test_explain_reads_latents_through_the_lm_head_without_a_decoder():
    """Coconut has no step decoder: each active latent shows its top tokens through the LM head, with their
    probabilities, as softmax(lm_head(z)) computed by hand from the greedy fill."""
    tok = build_word_tokenizer(QUESTIONS + ["<<3+4=7>>\n### 7"])
    spec = ReasonerSpec.for_method("coconut", latents_per_step=2, max_latent_stage=2)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok, seed=0), spec)
    builder = builder_for(tok, spec)
    got = explain(model, builder, QUESTIONS[:1], top_k=2)[0]
    prefix, slots = builder.eval_prompt(QUESTIONS[0])
    ids, mask = left_pad([prefix], tok.pad_token_id)
    with torch.no_grad():
        state = model.fill(ids, mask, torch.tensor([slots]))
        probs = torch.softmax(model.lm.get_output_embeddings()(state.z[0]), -1)
    assert slots == 4 and len(got["steps"]) == 2 and got["steps"] == [None, None]
    for g, group in enumerate(got["lm_head_tokens"]):
        assert len(group) == 2
        for j, latent in enumerate(group):
            values, indices = probs[2 * g + j].topk(2)
            assert [t for t, _ in latent] == [tok.decode([int(k)]) for k in indices]
            assert [p for _, p in latent] == pytest.approx(values.tolist(), rel=1e-5)
    text = format_explanation(got, c=2, has_decoder=False)
    assert text.count("(no step decoder) LM head: ") == 2 and " | " in text
