"""CODI (methods/codi.py): the teacher sequence and the distillation positions by hand, the distillation loss by
hand and against an uncached full-recompute reference, gradients (through the KV cache, teacher detached), the fixed
six latents, save/load and a micro run (two processes against one: tests/training/test_sft.py)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from atp_latent.config import load_config
from atp_latent.data.records import Problem
from atp_latent.data.sequences import IGNORE, Curriculum, SequenceBuilder, builder_for, collate, left_pad
from atp_latent.modeling import reasoner as reasoner_module
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.heads import distill_loss
from atp_latent.modeling.reasoner import LatentReasoner, ReasonerSpec
from atp_latent.modeling.tokenizer import build_word_tokenizer
from atp_latent.training.sft import curriculum_of, spec_of

PROBLEMS = [
    Problem(question="Ann has 3 cats and 4 dogs. How many pets?", steps=["3+4=7"], answer="7"),
    Problem(question="Bob has 2 bags of 5 pens and loses 1. How many pens?", steps=["2*5=10", "10-1=9"], answer="9"),
    Problem(question="Cy has 6 eggs and eats 2. He buys 13. How many eggs?", steps=["6-2=4", "4+13=17"], answer="17"),
    Problem(question="Di has 8 cards and gives 3. How many cards?", steps=["8-3=5"], answer="5"),
]
CONFIGS = Path(__file__).resolve().parents[2] / "src" / "atp_latent" / "configs"
CODI_CUR = Curriculum(latents_per_step=2, max_latent_stage=3, stage_offset=4)  # configs/*/codi.yaml: 6 fixed slots


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer([p.question for p in PROBLEMS] + ["<<1+2=3>>\n### 3"])


def make(tok, seed=0, **kw) -> LatentReasoner:
    torch.manual_seed(seed)
    lm = build_tiny_model("llama-tiny", tok, seed=seed)
    return LatentReasoner(lm, ReasonerSpec.for_method("codi", latents_per_step=2, max_latent_stage=3, **kw))


def codi_batch(tok, drop_last=True, problems=PROBLEMS):
    b = SequenceBuilder(tok, "codi", CODI_CUR, teacher=True, teacher_drop_last_step=drop_last)
    return collate([b.build(p, CODI_CUR.stage(0)) for p in problems], tok.pad_token_id)


def words(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_teacher_sequence_and_positions_by_hand(tok):
    """Student suffix and teacher sequence as tokens, with the distillation position on the token right before the
    answer's first token ("▁" of "### ▁1 7" in the word tokenizer) in both; the teacher drops its last step."""
    b = SequenceBuilder(tok, "codi", CODI_CUR, teacher=True)
    e = b.build(PROBLEMS[2], CODI_CUR.stage(0))
    assert e.n_slots == 6
    assert words(tok, e.suffix) == ["<|end-latent|>", "#", "#", "#", "▁", "1", "7", "<|eos|>"]
    assert e.student_pos == 4
    # the teacher continues the same prefix (the question is computed once for both)
    assert words(tok, e.teacher) == ["<|end-latent|>", "<", "<", "6", "-", "2", "=", "4", ">", ">", "\n",
                                     "#", "#", "#", "▁", "1", "7", "<|eos|>"]
    assert e.teacher_pos == 14 and words(tok, [e.teacher[e.teacher_pos + 1]]) == ["1"]
    assert e.teacher_labels == [IGNORE] + e.teacher[1:]  # CE on CoT + answer
    keep = SequenceBuilder(tok, "codi", CODI_CUR, teacher=True, teacher_drop_last_step=False).build(PROBLEMS[2], 4)
    assert words(tok, keep.teacher)[11:22] == ["<", "<", "4", "+", "1", "3", "=", "1", "7", ">", ">"]
    assert keep.teacher_pos == e.teacher_pos + 12 and keep.student_pos == e.student_pos  # + "<<4+13=17>>\\n"
    one = b.build(PROBLEMS[0], 4)  # a single step, dropped: the teacher writes the answer straight away
    assert words(tok, one.teacher) == ["<|end-latent|>", "#", "#", "#", "▁", "7", "<|eos|>"]
    assert one.teacher_pos == 4
    # Other methods build no teacher; the collated batch carries it only for CODI
    assert "teacher_ids" not in collate([SequenceBuilder(tok, "coconut", CODI_CUR).build(PROBLEMS[0], 1)], 0)
    batch = codi_batch(tok)
    for i in range(len(PROBLEMS)):
        nxt_s = batch["suffix_ids"][i, batch["student_pos"][i] + 1]
        nxt_t = batch["teacher_ids"][i, batch["teacher_pos"][i] + 1]
        assert nxt_s == nxt_t and words(tok, [int(nxt_s)])[0] == PROBLEMS[i].answer[0]


def test_position_with_a_merging_tokenizer():
    """A tokenizer that merges the space into the number (GPT-2's " 17"): the position is then "#" itself."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", "<|start-latent|>", "<|latent|>",
                                          "<|end-latent|>", "###", " 17", "Q", "\n"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(" 17", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", additional_special_tokens=["<|start-latent|>", "<|latent|>",
                                                                                 "<|end-latent|>"])
    b = SequenceBuilder(fast, "codi", CODI_CUR, teacher=True)
    ids, pos = b.before_answer("### 17", "17")
    assert fast.convert_ids_to_tokens(ids) == ["###", " 17"] and pos == 0


def test_distill_loss_by_hand():
    """Every layer counts once, 1/(L+1) each; each layer's term is divided by its teacher std (std^2 for l2); zero
    when equal; the teacher is a detached target."""
    torch.manual_seed(0)
    L1, B, d = 4, 3, 8  # L + 1 = 4: the embedding output and 3 layers
    t = torch.randn(L1, B, d) * torch.tensor([1.0, 2.0, 0.5, 3.0])[:, None, None]
    for kind in ("smooth_l1", "l2"):
        for div in (True, False):
            assert distill_loss(t.clone(), t, kind, div) == 0
    s = t.clone()
    s[2] += 0.3 * torch.randn(B, d)  # only layer 2 differs
    term = F.smooth_l1_loss(s[2], t[2])
    torch.testing.assert_close(distill_loss(s, t, "smooth_l1", False), term / L1)
    torch.testing.assert_close(distill_loss(s, t, "smooth_l1", True), term / t[2].std() / L1)
    sq = F.mse_loss(s[2], t[2])
    torch.testing.assert_close(distill_loss(s, t, "l2", True), sq / t[2].std() ** 2 / L1)
    s2 = s.clone()
    s2[0] += 1.0  # a second layer differing: the mean of the two terms' share
    both = (F.smooth_l1_loss(s2[0], t[0]) / t[0].std() + term / t[2].std()) / L1
    torch.testing.assert_close(distill_loss(s2, t, "smooth_l1", True), both)
    s, t = s.requires_grad_(), t.requires_grad_()
    distill_loss(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="smooth_l1, l2"):
        distill_loss(s, t, "cosine")


def reference_states(model: LatentReasoner, batch, n_latents: int):
    """Each row alone, with no cache and no padding: the question, 6 latents each the projected last hidden state of
    the sequence so far (full recompute), then the suffix; and the teacher sequence (question + its continuation) in
    one pass of its own. HF's hidden_states
    of every layer at the student's and the teacher's distillation positions: [L + 1, B, d] each."""
    lm, emb = model.lm, model.lm.get_input_embeddings()
    students, teachers = [], []
    for i in range(batch["prefix_ids"].shape[0]):
        prefix = batch["prefix_ids"][i][batch["prefix_mask"][i].bool()]
        seq = emb(prefix)[None]
        for _ in range(n_latents):
            h = lm.base_model(inputs_embeds=seq).last_hidden_state[:, -1:]
            seq = torch.cat([seq, model.projector(h)], dim=1)
        suffix = batch["suffix_ids"][i][batch["suffix_mask"][i].bool()]
        out = lm.base_model(inputs_embeds=torch.cat([seq, emb(suffix)[None]], 1), output_hidden_states=True)
        at = seq.shape[1] + int(batch["student_pos"][i])
        students.append(torch.stack([h[0, at] for h in out.hidden_states]))
        teacher = torch.cat([prefix, batch["teacher_ids"][i][batch["teacher_mask"][i].bool()]])
        out = lm.base_model(input_ids=teacher[None], output_hidden_states=True)
        at = len(prefix) + int(batch["teacher_pos"][i])
        teachers.append(torch.stack([h[0, at] for h in out.hidden_states]))
    return torch.stack(students, 1), torch.stack(teachers, 1)


@pytest.mark.parametrize("kind", ["smooth_l1", "l2"])
def test_distill_term_matches_an_uncached_reference(tok, kind):
    """The batched, padded, KV-cached forward gives the distillation of an uncached per-row recompute: every layer
    (the embedding output included) at the token before the answer in both sequences, each layer's mean over the
    batch's rows and dimensions divided by the teacher's std there (std^2 for l2), averaged over layers."""
    model = make(tok, distill_loss=kind).eval()
    batch = codi_batch(tok)
    with torch.no_grad():
        out = model(batch)
        s, t = reference_states(model, batch, 6)
    assert s.shape[0] == model.lm.config.num_hidden_layers + 1
    fn = F.smooth_l1_loss if kind == "smooth_l1" else F.mse_loss
    per_layer = [fn(s[j], t[j]) / (t[j].std() ** (2 if kind == "l2" else 1)) for j in range(s.shape[0])]
    expect = torch.stack(per_layer).mean()
    torch.testing.assert_close(out["distill"], expect, rtol=1e-4, atol=1e-6)
    assert out["distill"] > 0 and torch.isfinite(out["ce_teacher"]) and out["ce_teacher"] > 0
    spec = model.spec
    torch.testing.assert_close(out["loss"], out["ce"] + spec.distill_weight * out["distill"]
                               + spec.teacher_weight * out["ce_teacher"])


def test_other_methods_log_the_same_keys_as_zero(tok):
    torch.manual_seed(0)
    coconut = LatentReasoner(build_tiny_model("llama-tiny", tok, seed=0),
                             ReasonerSpec.for_method("coconut", latents_per_step=2, max_latent_stage=3))
    b = SequenceBuilder(tok, "coconut", CODI_CUR)
    out = coconut(collate([b.build(p, 4) for p in PROBLEMS], tok.pad_token_id))
    assert out["distill"] == 0 and out["ce_teacher"] == 0 and coconut.projector is None
    assert set(out) == set(make(tok)(codi_batch(tok)))


def test_gradients_reach_projector_and_lm_through_the_cache_teacher_detached(tok, monkeypatch):
    model = make(tok)
    batch = codi_batch(tok)
    lm_params = [p for n, p in model.lm.named_parameters() if "layers.0." in n]
    proj_params = list(model.projector.parameters())
    out = model(batch)
    # The student's CE and its distilled states reach the projector only through the latents' keys and values
    for term in ("ce", "distill"):
        grads = torch.autograd.grad(out[term], proj_params + lm_params, retain_graph=True, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads), term
    # The teacher CE trains the LM (one teacher pass, with gradient), never the projector
    grads = torch.autograd.grad(out["ce_teacher"], proj_params + lm_params, retain_graph=True, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads[: len(proj_params)])
    assert all(g.abs().sum() > 0 for g in grads[len(proj_params):])
    # The distillation's gradient is the student's alone: the same as with the teacher's states detached at the source
    g_distill = torch.autograd.grad(out["distill"], lm_params)
    real = reasoner_module.backbone_forward

    def detached_teacher(*a, **kw):  # reasoner.backbone_forward runs the teacher pass (and the step decoder)
        last, layers = real(*a, **kw)
        return last, tuple(h.detach() for h in layers)

    monkeypatch.setattr(reasoner_module, "backbone_forward", detached_teacher)
    ref = torch.autograd.grad(model(batch)["distill"], lm_params)
    for a, b in zip(g_distill, ref):
        torch.testing.assert_close(a, b)


def test_config_fills_exactly_six_latents_in_training_and_evaluation(tok):
    """configs/quickstart/codi.yaml: 6 slots at every epoch, all active, and evaluation fills exactly 6."""
    cfg = load_config(str(CONFIGS / "quickstart" / "codi.yaml"))
    cur, spec = curriculum_of(cfg), spec_of(cfg)
    assert spec.use_projector and spec.use_teacher and spec.eval_slots == 6 and cfg.model.init_from.endswith("cot/best/model")
    b = SequenceBuilder(tok, "codi", cur, teacher=spec.use_teacher)
    for epoch in range(cfg.train.epochs):
        batch = collate([b.build(p, cur.stage(epoch)) for p in PROBLEMS], tok.pad_token_id)
        assert batch["n_slots"].tolist() == [6] * 4 and batch["active"].all() and batch["active"].shape[1] == 6
    model = LatentReasoner(build_tiny_model("llama-tiny", tok, seed=0), spec).eval()
    ev = builder_for(tok, spec)
    prompts = [ev.eval_prompt(p.question) for p in PROBLEMS]
    assert {n for _, n in prompts} == {6}
    ids, mask = left_pad([p for p, _ in prompts], tok.pad_token_id)
    state, gen = model.answer(ids, mask, torch.tensor([n for _, n in prompts]), end_id=ev.end_id, eos_id=ev.eos_id,
                              pad_id=tok.pad_token_id, max_new_tokens=3)
    assert state.n_active.tolist() == [6] * 4 and state.n_passes == 7  # the prefix, then one pass per latent
    assert "teacher_ids" not in collate([ev.build(PROBLEMS[0], 4)], tok.pad_token_id)  # evaluation: no teacher


def test_latents_are_projected_and_saved(tok, tmp_path):
    model = make(tok, projector_dim=24).eval()
    assert model.projector.mlp[0].out_features == 24 and isinstance(model.projector.mlp[3], torch.nn.LayerNorm)
    batch = codi_batch(tok)
    with torch.no_grad():
        state = model.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"])
        prefix_h = model.lm.base_model(input_ids=batch["prefix_ids"], attention_mask=batch["prefix_mask"]).last_hidden_state
    torch.testing.assert_close(state.z[:, 0], model.projector(prefix_h[:, -1]))  # the first latent: prj(h at <bot>)
    d = state.z.shape[-1]  # LayerNorm's output (unit gain, zero bias at init): each latent has norm sqrt(d)
    torch.testing.assert_close(state.z.norm(dim=-1), torch.full(state.z.shape[:2], d ** 0.5), rtol=1e-3, atol=0.0)
    with torch.no_grad():
        model.projector.mlp[0].weight.add_(1.0)
    model.save_pretrained(tmp_path / "ckpt", tok)
    back, _ = LatentReasoner.from_pretrained(tmp_path / "ckpt")
    assert back.spec.use_teacher and back.spec.projector_dim == 24
    for (n, a), b in zip(model.projector.state_dict().items(), back.projector.state_dict().values()):
        torch.testing.assert_close(a, b, msg=n)


def test_micro_run_lowers_the_loss(tok):
    model = make(tok, seed=1)
    batch = codi_batch(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else {k: v.item() for k, v in out.items()}
    with torch.no_grad():
        last = model(batch)
    assert last["loss"] < 0.5 * first["loss"]
    assert last["ce"] < first["ce"] and last["ce_teacher"] < first["ce_teacher"]


def test_simcot_on_codi_config_runs_the_decoder(tok):
    """configs/quickstart/simcot_codi.yaml: CODI plus the step decoder, one latent per step, 6 groups."""
    cfg = load_config(str(CONFIGS / "quickstart" / "simcot_codi.yaml"))
    cur, spec = curriculum_of(cfg), spec_of(cfg)
    assert spec.method == "codi" and spec.use_decoder and spec.latents_per_step == 1 and spec.eval_slots == 6
    b = SequenceBuilder(tok, "codi", cur, teacher=True)
    examples = [b.build(p, cur.stage(0)) for p in PROBLEMS]
    assert [e.n_slots for e in examples] == [6] * 4
    assert words(tok, examples[1].group_targets[0]) == words(tok, b.encode("<<2*5=10>>")) + ["<|eos|>"]
    assert examples[1].group_targets[2] == [tok.eos_token_id]  # beyond the problem's steps: eos only
    torch.manual_seed(0)
    model = LatentReasoner(build_tiny_model("llama-tiny", tok, seed=0), spec)
    out = model(collate(examples, tok.pad_token_id))
    assert out["decoder"] > 0 and out["distill"] > 0
    torch.testing.assert_close(out["loss"], out["ce"] + out["decoder"] + out["distill"] + out["ce_teacher"])
