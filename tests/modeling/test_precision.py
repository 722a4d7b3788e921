"""Frozen weights under autocast are cast once per call: the same bits as autocast's per-pass casts, one saved copy
per layer instead of one per latent pass, and the layers get their own parameters back afterwards."""

import contextlib

import pytest
import torch

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import builder_for
from atp_latent.modeling import precision
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.lora import add_lora
from atp_latent.modeling.precision import frozen_weight_casts
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.rl import rollout

PROBLEMS = [
    Problem(question="Ann has 3 cats and gets 4 more. How many cats?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 bags of 5 pens and loses 1. How many pens?", steps=["2*5=10", "10-1=9"], answer="9"),
]
SLOTS = 8


def frozen_linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]


@pytest.fixture(scope="module")
def lora_colar(aim_end_latent):
    """A CoLaR reasoner with LoRA on its LM (frozen fp32 base) and CoLaR-RL trajectories that use every slot."""
    tok = build_word_tokenizer([p.question for p in PROBLEMS] + ["<<3+4=7>>\n### 7"])
    torch.manual_seed(0)
    spec = ReasonerSpec.for_method("colar", latents_per_step=1, max_latent_stage=SLOTS)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok, seed=0), spec)
    add_lora(model.lm, r=4, alpha=8)
    for name, p in model.lm.named_parameters():
        if "lora_B" in name:  # B = 0 at init would hide a wrong base layer behind a zero adapter
            torch.nn.init.normal_(p, std=0.02)
    b = builder_for(tok, spec)
    aim_end_latent(model, b, [PROBLEMS[0].question], logit=-20.0, slots=SLOTS)  # never stops: all SLOTS passes are scored
    cfg = load_config(None, ["method.name=colar-rl", "rl.group_size=2", "rl.max_new_tokens=3", "rl.w_fmt=0",
                             "rl.w_coh=0", f"curriculum.max_latent_stage={SLOTS}"])
    traj = rollout(model.eval(), b, PROBLEMS, cfg, torch.Generator().manual_seed(1), "cpu")
    assert int(traj.batch["rl_active"].sum(-1).min()) == SLOTS
    return model, traj.batch


def scored_with_saved(model, batch, forward):
    """forward(model, batch) under CPU bf16 autocast: (outputs, LoRA gradients, bf16 tensors saved for backward
    that have a frozen linear weight's shape, one entry per distinct storage)."""
    shapes = {tuple(m.weight.shape) for m in frozen_linears(model)}
    saved = {}

    def pack(t):
        if t.dtype == torch.bfloat16 and tuple(t.shape) in shapes:
            saved[t.untyped_storage().data_ptr()] = tuple(t.shape)
        return t

    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(model, batch)
    sum(v.float().sum() for v in out.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads, saved


def test_scoring_is_bitwise_the_same_and_saves_one_copy_per_layer(lora_colar, monkeypatch):
    model, batch = lora_colar
    model.train()
    cast_once = scored_with_saved(model, batch, lambda m, b: m(b))
    monkeypatch.setattr(precision, "frozen_weight_casts", lambda module: contextlib.nullcontext())
    per_pass = scored_with_saved(model, batch, lambda m, b: m(b))  # autocast's own casts, at every pass
    for k in per_pass[0]:
        assert torch.equal(cast_once[0][k], per_pass[0][k]), k
    assert per_pass[1] and set(cast_once[1]) == set(per_pass[1])
    assert all("lora_" in n or not n.startswith("lm.") for n in cast_once[1])  # the base stayed frozen
    for n in per_pass[1]:
        assert torch.equal(cast_once[1][n], per_pass[1][n]), n
    n_layers = len(frozen_linears(model))
    assert len(per_pass[2]) > SLOTS * 4  # the setting shows the problem: a copy per layer per pass
    assert 0 < len(cast_once[2]) <= n_layers


def test_layers_get_their_parameters_back(lora_colar):
    model, _ = lora_colar
    before = {n: p for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="inside"):
            with frozen_weight_casts(model):
                lent = [m.weight for m in frozen_linears(model)]
                assert lent and all(w.dtype == torch.bfloat16 and not isinstance(w, torch.nn.Parameter) for w in lent)
                with frozen_weight_casts(model):  # re-entrant: nothing left to cast
                    assert all(m.weight is w for m, w in zip(frozen_linears(model), lent))
                raise RuntimeError("inside")
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert all(p.dtype == torch.float32 for p in after.values())
    trainable = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.requires_grad]
    with torch.autocast("cpu", dtype=torch.bfloat16), frozen_weight_casts(model):
        assert trainable and all(m.weight.dtype == torch.float32 for m in trainable)  # autocast caches those itself
    with frozen_weight_casts(model):  # no autocast: nothing to do
        assert all(isinstance(m.weight, torch.nn.Parameter) and m.weight.dtype == torch.float32
                   for m in frozen_linears(model))


def test_fsdp_is_left_alone():
    """FSDP gathers and frees its layers' parameters itself: a model with an FSDP(2) module inside keeps autocast's
    own casts (fully_shard gives a module a subclass of FSDPModule, as here)."""
    from torch.distributed.fsdp import FSDPModule

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16), frozen_weight_casts(model):
        assert model[0].weight.dtype == torch.bfloat16
    model[1].__class__ = type("FSDPLinear", (FSDPModule, torch.nn.Linear), {})
    with torch.autocast("cpu", dtype=torch.bfloat16), frozen_weight_casts(model):
        assert model[0].weight.dtype == torch.float32


def test_gpt2_conv1d_layers_are_cast_once_with_the_same_logits():
    """GPT-2 keeps its linear layers as Conv1D (weight (in, out), an addmm that autocast casts alike)."""
    from transformers.pytorch_utils import Conv1D

    tok = build_word_tokenizer([p.question for p in PROBLEMS])
    lm = build_tiny_model("gpt2-tiny", tok, seed=0)
    add_lora(lm, r=4, alpha=8)
    ids = torch.tensor([[1, 5, 7, 9, 4, 6]])
    convs = [m for m in lm.modules() if isinstance(m, Conv1D)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        own = lm(ids).logits
        with frozen_weight_casts(lm):
            assert convs and all(m.weight.dtype == m.bias.dtype == torch.bfloat16 for m in convs)
            lent = lm(ids).logits
    assert torch.equal(own, lent)
    assert all(isinstance(m.weight, torch.nn.Parameter) and m.weight.dtype == torch.float32 for m in convs)
