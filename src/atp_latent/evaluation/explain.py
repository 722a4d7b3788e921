"""`explain`: read a problem's latent plan back as text, through the step decoder (METHOD.md §6) where the method
has one, else through the LM head: each latent's most likely tokens, as upstream probes read Coconut's and CODI's
latents."""

from __future__ import annotations

import torch

from atp_latent.data.sequences import SequenceBuilder, left_pad
from atp_latent.evaluation.answers import extract_answer
from atp_latent.modeling.reasoner import LatentReasoner
from atp_latent.modeling.tokenizer import END_LATENT


@torch.no_grad()
def explain(model: LatentReasoner, builder: SequenceBuilder, questions: list[str], max_new_tokens: int = 16,
            device="cpu", top_k: int = 3) -> list[dict]:
    """Per question: decoded text of each active latent group (step decoder) or each latent's `top_k` tokens
    through the LM head with their probabilities (methods without a decoder), the group's mean sigma (VAE head
    only: how much noise training sampled around it), the stop decision, and the answer."""
    model.eval()
    tok = builder.tok
    prompts = [builder.eval_prompt(q) for q in questions]
    ids, mask = left_pad([p for p, _ in prompts], tok.pad_token_id)
    n_slots = torch.tensor([s for _, s in prompts])
    state, gen = model.answer(ids.to(device), mask.to(device), n_slots.to(device), builder.end_id,
                              tok.eos_token_id, tok.pad_token_id, max_new_tokens)
    c = model.spec.latents_per_step
    L = state.z.shape[1]
    groups = [(i, g) for i in range(len(questions)) for g in range(L // c) if state.active[i, g * c]]
    texts: dict[tuple[int, int], str] = {}
    if groups and model.spec.use_decoder:
        rows = torch.tensor([i for i, _ in groups], device=state.z.device)
        gs = torch.tensor([g for _, g in groups], device=state.z.device)
        decoded = model.decode_groups(model.decoder_inputs(state.z, rows, gs), tok.eos_token_id, tok.pad_token_id)
        for (i, g), row in zip(groups, decoded.tolist()):
            cut = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
            texts[(i, g)] = tok.decode(row[:cut], skip_special_tokens=False)
    probes: dict[tuple[int, int], list[tuple[str, float]]] = {}
    if not model.spec.use_decoder and L:  # the LM head on each latent as the LM reads it: what it is closest to saying
        fed = model.latent_embeddings(state.z).to(model.lm.dtype)
        probs = torch.softmax(model.lm.get_output_embeddings()(fed).float(), -1)
        top = probs.topk(top_k, dim=-1)
        for i, t in state.active.nonzero().tolist():
            probes[(i, t)] = [(tok.decode([int(k)]), float(v)) for k, v in zip(top.indices[i, t], top.values[i, t])]
    # mean std over each group's c latents and d dimensions [B, L // c]; slots past the last whole group are
    # dropped: where every row stops, the engine appends that group's (inactive) start slot, so L = g*c + 1
    sigma = torch.exp(0.5 * state.logvar[:, : L // c * c].float()).mean(-1).view(len(questions), L // c, c) \
        .mean(-1) if state.logvar is not None else None
    out = []
    for i, q in enumerate(questions):
        shown = [g for g in range(L // c) if state.active[i, g * c]]
        stop_slot = state.stopped[i].nonzero().flatten().tolist() if state.stopped.numel() else []
        p_stop = None
        if stop_slot and state.stop_logits is not None:
            p_stop = float(torch.softmax(state.stop_logits[i, stop_slot[0]].float(), -1)[1])
        answer_text = tok.decode(gen.tokens[i, : int(gen.lengths[i])].tolist(), skip_special_tokens=False)
        out.append({
            "question": q,
            "steps": [texts.get((i, g), None) for g in shown],
            "lm_head_tokens": [[probes[(i, g * c + j)] for j in range(c) if (i, g * c + j) in probes] for g in shown]
            if probes else None,
            "sigma": None if sigma is None else [float(sigma[i, g]) for g in shown],
            "latents": int(state.active[i].sum()) if state.active.numel() else 0,
            "slots": int(n_slots[i]),
            "stopped_at_group": stop_slot[0] // c if stop_slot else None,
            "p_stop": p_stop,
            "stopped_by": "LM head" if model.spec.lm_head_stop else "stop head",
            "output": answer_text,
            "answer": extract_answer(END_LATENT + answer_text),
        })
    return out


def format_explanation(e: dict, gold: str | None = None, c: int = 2, has_decoder: bool = True) -> str:
    lines = [f"Q: {e['question']}"]
    for g, text in enumerate(e["steps"]):
        shown = text
        if not has_decoder:  # each latent's most likely tokens through the LM head, latents apart by " | "
            latents = e["lm_head_tokens"][g] if e.get("lm_head_tokens") else []
            tops = " | ".join(" ".join(f"{t!r} {p:.2f}" for t, p in latent) for latent in latents)
            shown = f"(no step decoder) LM head: {tops}" if latents else "(this method has no step decoder)"
        noise = f", sigma {e['sigma'][g]:.3f}" if e.get("sigma") else ""
        lines.append(f"  latent group {g + 1} (slots {g * c}-{g * c + c - 1}{noise}): {shown}")
    if e["stopped_at_group"] is not None and e.get("stopped_by") == "LM head":
        lines.append(f"  LM head: emitted <|end-latent|> after latent {e['stopped_at_group']} "
                     f"(p={e['p_stop']:.2f}); {e['latents']} of {e['slots']} latent slots used")
    elif e["stopped_at_group"] is not None:
        lines.append(f"  stop head: stopped before group {e['stopped_at_group'] + 1} (p_stop={e['p_stop']:.2f}); "
                     f"{e['latents']} of {e['slots']} latent slots used")
    else:
        lines.append(f"  no stop: {e['latents']} of {e['slots']} latent slots used")
    verdict = ""
    if gold is not None:
        from atp_latent.evaluation.answers import answers_match

        verdict = f"  (gold {gold}, {'correct' if answers_match(e['answer'], gold) else 'wrong'})"
    lines.append(f"  answer: {e['answer']}{verdict}")
    return "\n".join(lines)
