"""CoLaR's SFT on compressed chains (methods/colar.py): one teacher-forced pass, no recurrence.

    prefix (question, "(c)", <|start-latent|>) | g_0 g_1 ... g_{K-1} (right-padded to the batch's K) | suffix
          h_start ------------------------------> predicts g_0's label, latent head -> emb(g_0) / emb_std
          h(g_k), k < K - 1 ---------------------> g_{k+1}'s label,             -> emb(g_{k+1}) / emb_std
          h(g_{K-1}) ---------------------------> <|end-latent|>,               -> emb(<|end-latent|>) / emb_std

g_k's input embedding is the sum of its (up to c) token embeddings / sqrt(their number). The CE runs over the group
labels and the answer's labels together (one mean over every labelled token, as upstream's single LM loss); the
latent loss is the mean over dimensions and over those K + 1 positions of every row, against detached targets, as
upstream (whose last target is the embedding of its end marker, "###").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from atp_latent.modeling.engine import teacher_force_embeds

IGNORE = -100


def compress(emb_table: torch.nn.Embedding, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Group embeddings [B, K, d] from token ids [B, K, c]: the sum of each group's valid token embeddings / sqrt(n)
    (upstream's sqrt_mean; upstream adds 1e-5 to the root, which only matters for the empty groups masked here)."""
    e = emb_table(ids) * mask[..., None].to(emb_table.weight.dtype)
    n = mask.sum(-1, keepdim=True).clamp(min=1).to(e.dtype)
    return e.sum(2) / n.sqrt()


def latent_loss(mu: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor, where: torch.Tensor, kind: str,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The latent head's loss against the next group's scaled embedding, per position the mean over dimensions,
    then the mean over the positions `where` is true. mse: on a reparameterised sample mu + sigma eps (upstream's
    default; in expectation MSE(mu, target) + mean sigma^2); nll: -log N(target; mu, sigma^2)."""
    mu, logvar, target = mu.float(), logvar.float(), target.detach().float()
    if kind == "mse":
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        per = ((mu + torch.exp(0.5 * logvar) * eps - target) ** 2).mean(-1)
    elif kind == "nll":
        per = (0.5 * (logvar + (target - mu) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))).mean(-1)
    else:
        raise ValueError(f"unknown latent_loss {kind!r} (known: mse, nll)")
    return (per * where).sum() / where.sum().clamp(min=1)


def compressed_losses(reasoner, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CE (group labels + answer) and the latent loss of a batch built by SequenceBuilder.build_compressed."""
    lm, spec = reasoner.lm, reasoner.spec
    emb_table = lm.get_input_embeddings()
    B, K = batch["comp_ids"].shape[:2]
    state = reasoner.fill(batch["prefix_ids"], batch["prefix_mask"], torch.zeros_like(batch["n_slots"]))
    groups = compress(emb_table, batch["comp_ids"], batch["comp_mask"])  # [B, K, d]
    present = batch["comp_mask"].any(-1)  # [B, K]
    embeds = torch.cat([groups, emb_table(batch["suffix_ids"])], dim=1)
    hidden = teacher_force_embeds(lm, state, embeds, torch.cat([present.long(), batch["suffix_mask"].long()], 1))
    # the state before each group and after the last one: <|start-latent|>'s, then each group's
    before = torch.cat([state.last_hidden[:, None], hidden[:, :K]], dim=1)  # [B, K + 1, d]
    suffix = hidden[:, K:]
    comp_labels, targets = batch["comp_labels"], batch["labels"][:, 1:]
    on_groups, on_suffix = comp_labels != IGNORE, targets != IGNORE
    head = lm.get_output_embeddings()
    logits = head(torch.cat([before[on_groups], suffix[:, :-1][on_suffix]])).float()
    ce = F.cross_entropy(logits, torch.cat([comp_labels[on_groups], targets[on_suffix]]))
    # targets: every group's embedding, then <|end-latent|>'s at each row's end (right after its last group)
    rows, n_groups = torch.arange(B, device=groups.device), present.sum(-1)
    target = torch.cat([groups, torch.zeros_like(groups[:, :1])], dim=1)
    target[rows, n_groups] = emb_table(comp_labels[rows, n_groups])  # the label after the last group: the end token
    mu, logvar = reasoner.latent_head(before)
    lat = latent_loss(mu, logvar, target / spec.emb_std, on_groups, spec.latent_loss)
    zero = ce.new_zeros(())
    sigma = (torch.exp(0.5 * logvar.detach().float()).mean(-1) * on_groups).sum() / on_groups.sum().clamp(min=1)
    return {"ce": ce, "latent": lat, "kl": zero, "decoder": zero, "stop": zero, "distill": zero, "ce_teacher": zero,
            "sigma": sigma, "loss": ce + spec.latent_weight * lat, "active_latents": n_groups.float().mean()}
