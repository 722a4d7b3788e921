"""The latent engine: one batched, KV-cached loop shared by training, evaluation, RL rollouts and `explain`.

Batch layout (columns are shared by every row, so every pass is one batched call):

    [left-padded prefix | latent slot 0 .. L-1 | suffix or generated tokens]

A row that has fewer latents, or whose stop head fired, keeps its later slot columns with attention
mask 0; position ids follow the cumulative sum of the attention mask, so masked columns take no
position and a row computes exactly what it would compute alone. Passes: one over the prefix, one
single-column pass per latent slot that some row still uses, then the suffix (teacher forcing) or one
column per generated token.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@functools.cache
def _cache_kwarg(module_type: type) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); support both. Looked up once per class.
    params = inspect.signature(module_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends new columns into spare capacity instead of concatenating the whole cache again
    at every pass, as `DynamicLayer.update` does: a copy that grows with the cache (with this layer, 32 tokens
    generated after a 100- or 200-token prefix at llama-small, batch 128, took 6-16% less time on a shared 2-core
    CPU; the coherence reward's decode of short rows, 0-5%). `keys`/`values` are views of the first columns of a
    buffer with room to grow; anything else that replaces them (crop, `batch_select_indices`) is adopted as the new
    contents at the next update. Under autograd (SFT's passes) writing into a buffer that an earlier pass saved for
    backward would be an in-place error, so columns that require grad are concatenated, as are the first ones."""

    HEADROOM = 16  # spare columns beyond half the length again: one decode of a short row fits without a copy

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._key_buffer = self._value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = self.keys.shape[-2] if self.keys is not None and self.keys.numel() else 0
        if n == 0 or key_states.requires_grad or value_states.requires_grad or self.keys.requires_grad:
            # the first columns (transformers initialises the layer its own way, which differs across versions),
            # or autograd: concatenate; the next update without grad adopts the result into a buffer
            self._key_buffer = self._value_buffer = None
            return super().update(key_states, value_states, *args, **kwargs)
        need = n + key_states.shape[-2]
        kb, vb = self._key_buffer, self._value_buffer
        if kb is None or not self._owns_contents(n) or need > kb.shape[-2] \
                or kb.shape[:2] != key_states.shape[:2] or vb.shape[:2] != value_states.shape[:2]:
            kb = self._new_buffer(key_states, need)
            vb = self._new_buffer(value_states, need)
            if n:
                kb[..., :n, :] = self.keys
                vb[..., :n, :] = self.values
            self._key_buffer, self._value_buffer = kb, vb
        kb[..., n:need, :] = key_states
        vb[..., n:need, :] = value_states
        self.keys, self.values = kb[..., :need, :], vb[..., :need, :]
        return self.keys, self.values

    def _owns_contents(self, n: int) -> bool:
        # keys/values are still the views this layer handed out, or their first columns (nothing replaced them since)
        return n > 0 and self.keys.data_ptr() == self._key_buffer.data_ptr() \
            and self.values.data_ptr() == self._value_buffer.data_ptr()

    def _new_buffer(self, like: torch.Tensor, need: int) -> torch.Tensor:
        shape = (*like.shape[:-2], need + need // 2 + self.HEADROOM, like.shape[-1])
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep rows `beam_idx` (a batch that shrinks as rows end), spare capacity included."""
        n = self.get_seq_length()
        if n == 0:
            return
        if self._key_buffer is None or not self._owns_contents(n):
            return super().reorder_cache(beam_idx)
        idx = beam_idx.to(self.keys.device)
        self._key_buffer = self._key_buffer.index_select(0, idx)
        self._value_buffer = self._value_buffer.index_select(0, idx)
        self.keys, self.values = self._key_buffer[..., :n, :], self._value_buffer[..., :n, :]


def new_cache(lm) -> DynamicCache:
    """A `DynamicCache` for `lm` whose plain layers are `GrowingLayer`s (sliding-window and other special layers
    stay as transformers builds them)."""
    try:
        cache = DynamicCache(config=lm.config)
    except TypeError:  # older signature
        cache = DynamicCache()
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for i, layer in enumerate(layers):
            if type(layer) is DynamicLayer:
                layers[i] = GrowingLayer()
        if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers added as the model asks
            cache.layer_class_to_replicate = GrowingLayer
    return cache


def backbone_forward(lm, embeds, attention_mask, position_ids, cache, all_layers: bool = False):
    """Last-layer (post final norm) hidden states of `lm`'s backbone for new columns, extending `cache`.
    `all_layers`: also HF's `hidden_states` (the embedding output and every layer's, the last one being
    `last_hidden_state`), returned as (last, hidden_states)."""
    backbone = lm.base_model
    kwargs = {_cache_kwarg(type(backbone)): cache}
    if all_layers:
        kwargs["output_hidden_states"] = True
    out = backbone(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=True, **kwargs)
    return (out.last_hidden_state, out.hidden_states) if all_layers else out.last_hidden_state


@dataclass
class LatentState:
    """Everything after the latent slots are filled; the suffix/answer continues from here."""

    cache: DynamicCache
    attention_mask: torch.Tensor  # [B, T] columns already in the cache
    next_position: torch.Tensor  # [B] position id of each row's next real token
    last_hidden: torch.Tensor  # [B, d] hidden state at each row's last active position
    z: torch.Tensor  # [B, L, d] latent input embeddings (computed even where masked)
    mu: torch.Tensor | None  # [B, L, d] (VAE only)
    logvar: torch.Tensor | None  # [B, L, d]
    active: torch.Tensor  # [B, L] bool: slot attended to
    stop_logits: torch.Tensor | None  # [B, L, 2], meaningful where `consulted`
    consulted: torch.Tensor  # [B, L] bool: stop head asked at this slot
    stopped: torch.Tensor  # [B, L] bool: the stop decision fired at this slot
    n_passes: int  # model passes run (prefix + latent passes)

    @property
    def n_active(self) -> torch.Tensor:
        return self.active.sum(-1)


def fill_latents(
    lm,
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    n_slots: torch.Tensor,
    *,
    latent_head: nn.Module | None = None,
    stop_head: nn.Module | None = None,
    c: int = 1,
    sample_latents: bool = False,
    latent_temperature: float = 1.0,
    stop_mode: str = "greedy",
    forced_active: torch.Tensor | None = None,
    forced_z: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    projector: nn.Module | None = None,
    after_prefix: Callable[[DynamicCache, torch.Tensor, torch.Tensor], int] | None = None,
    lm_stop_id: int | None = None,
    latent_scale: float = 1.0,
) -> LatentState:
    """Run the prefix, then fill up to `n_slots[b]` latent slots per row.

    Embedding of slot t: Coconut (no latent head) uses h, the hidden state at the row's last active
    position; the VAE head uses mu(h) or a sample from N(mu, (k sigma)^2) (k = `latent_temperature`, 1
    outside RL exploration), or `forced_z[:, t]` when given
    (re-scoring an RL rollout). Stop decisions at group starts (t % c == 0): `stop_mode` is "greedy"
    (p(stop) > p(continue)), "sample", "forced" (activity given by `forced_active`, the SFT teacher
    forcing and RL re-scoring case) or "never" (the stop head read but ignored: every slot below n_slots runs, as
    without a stop head; `eval --all-latents`). Without a stop head every slot below n_slots is active.
    `projector` (CODI, without a latent head): the embedding of slot t is projector(h) instead of h.
    `after_prefix(cache, prefix_mask, next_position)` (CODI's teacher task, which shares the question): runs its own
    columns right after the prefix in the same cache and returns how many it added; the latents and the suffix
    never attend to them (mask 0) and positions continue from the prefix, so a row computes what it would without.
    `lm_stop_id` (CoLaR, instead of a stop head): before slot t >= 1 the LM head reads h, the state after slot t - 1,
    and the row stops when it emits that token (greedy: it is the argmax; "sample": drawn with its probability);
    `stop_logits` then holds (log-sum-exp of every other token, its logit), the two-way split of the same softmax.
    `latent_scale`: the latent fed back is latent_scale x z (CoLaR's embedding std; `z` keeps the unscaled draw).
    """
    B, P = prefix_ids.shape
    L = int(n_slots.max().item()) if n_slots.numel() else 0
    if forced_active is not None:
        L = forced_active.shape[1]  # teacher forcing replays exactly the slots that were run
    device = prefix_ids.device
    emb_table, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    cache = new_cache(lm)
    position = (prefix_mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = backbone_forward(lm, emb_table(prefix_ids), prefix_mask, position, cache)
    h = hidden[:, -1]
    mask = prefix_mask.long()
    next_pos = prefix_mask.long().sum(-1)
    n_passes = 1
    if after_prefix is not None:
        mask = torch.cat([mask, mask.new_zeros(B, after_prefix(cache, mask, next_pos))], dim=1)
        n_passes += 1

    d = h.shape[-1]
    zs, mus, logvars, actives, stops_l, consulted_l, stopped_l = [], [], [], [], [], [], []
    alive = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(L):
        in_range = t < n_slots
        if forced_active is None and not (alive & in_range).any():
            break
        if latent_head is not None:
            mu, logvar = latent_head(h)
            if forced_z is not None:
                z = forced_z[:, t]
            elif sample_latents:
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                z = mu + latent_temperature * torch.exp(0.5 * logvar) * eps  # N(mu, (k sigma)^2)
            else:
                z = mu
            mus.append(mu)
            logvars.append(logvar)
        else:
            z = projector(h) if projector is not None else h
        consult = torch.zeros(B, dtype=torch.bool, device=device)
        stop_now = torch.zeros(B, dtype=torch.bool, device=device)
        vocab = None
        if lm_stop_id is not None and t >= 1:  # the LM head on the state after the previous slot
            vocab = head(h).float()
            others = vocab.index_fill(1, torch.tensor([lm_stop_id], device=device), float("-inf"))
            logits = torch.stack([torch.logsumexp(others, -1), vocab[:, lm_stop_id]], -1)
        elif stop_head is not None and t % c == 0:
            logits = stop_head(z)
        else:
            logits = None
        if logits is not None:
            stops_l.append(logits)
            consult = in_range & alive if forced_active is None else in_range
            if stop_mode == "greedy":
                stop_now = vocab.argmax(-1) == lm_stop_id if vocab is not None else logits[:, 1] > logits[:, 0]
            elif stop_mode == "sample":
                p_stop = torch.softmax(logits.float(), -1)[:, 1]
                stop_now = torch.rand(p_stop.shape, generator=generator, device=device) < p_stop
            elif stop_mode == "forced":
                stop_now = ~forced_active[:, t] if forced_active is not None else stop_now
            elif stop_mode == "never":  # every slot below n_slots runs; the logits are still read (inspection)
                pass
            else:
                raise ValueError(f"unknown stop_mode {stop_mode!r}")
            stop_now = stop_now & consult & alive
            alive = alive & ~stop_now
        elif stop_head is not None or lm_stop_id is not None:
            stops_l.append(torch.zeros(B, 2, device=device, dtype=z.dtype))
        active = forced_active[:, t] if forced_active is not None else (alive & in_range)
        if forced_active is not None:
            alive = alive & active
        if active.any():
            mask = torch.cat([mask, active.long()[:, None]], dim=1)
            fed = z if latent_scale == 1.0 else z * latent_scale
            out = backbone_forward(lm, fed[:, None].to(emb_table.weight.dtype), mask, next_pos[:, None], cache)
            h = torch.where(active[:, None], out[:, -1], h)
            next_pos = next_pos + active.long()
            n_passes += 1
        zs.append(z)
        actives.append(active)
        consulted_l.append(consult)
        stopped_l.append(stop_now)

    def stack(xs, shape_tail, dtype=None):
        if xs:
            return torch.stack(xs, dim=1)
        return torch.zeros(B, 0, *shape_tail, device=device, dtype=dtype or h.dtype)

    return LatentState(
        cache=cache,
        attention_mask=mask,
        next_position=next_pos,
        last_hidden=h,
        z=stack(zs, (d,)),
        mu=stack(mus, (d,)) if latent_head is not None else None,
        logvar=stack(logvars, (d,)) if latent_head is not None else None,
        active=stack(actives, (), torch.bool),
        stop_logits=stack(stops_l, (2,)) if stop_head is not None or lm_stop_id is not None else None,
        consulted=stack(consulted_l, (), torch.bool),
        stopped=stack(stopped_l, (), torch.bool),
        n_passes=n_passes,
    )


def teacher_force_hidden(lm, state: LatentState, suffix_ids: torch.Tensor, suffix_mask: torch.Tensor,
                         all_layers: bool = False):
    """Run the right-padded suffix in one pass after the latents; return its last hidden states [B, S, d].
    Callers apply the output head only where a label is (a 128k-vocabulary fp32 logit row per padded
    position would cost gigabytes at the paper's batch). `all_layers`: (last, HF's hidden_states), as
    `backbone_forward`."""
    return teacher_force_embeds(lm, state, lm.get_input_embeddings()(suffix_ids), suffix_mask, all_layers)


def teacher_force_embeds(lm, state: LatentState, embeds: torch.Tensor, mask: torch.Tensor, all_layers: bool = False):
    """`teacher_force_hidden` on input embeddings [B, S, d]: columns with mask 0 may sit anywhere (CoLaR's
    right-padded latent groups before the suffix); they take no position, so each row computes what it would
    compute alone."""
    full = torch.cat([state.attention_mask, mask.long()], dim=1)
    position = state.next_position[:, None] + (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = backbone_forward(lm, embeds, full, position, state.cache, all_layers)
    state.attention_mask = full
    return hidden


def teacher_force(lm, state: LatentState, suffix_ids: torch.Tensor, suffix_mask: torch.Tensor) -> torch.Tensor:
    """Run the right-padded suffix in one pass after the latents; return its logits [B, S, V]."""
    return lm.get_output_embeddings()(teacher_force_hidden(lm, state, suffix_ids, suffix_mask))


@dataclass
class Generation:
    tokens: torch.Tensor  # [B, N] generated ids, pad after eos
    logprobs: torch.Tensor  # [B, N] log-prob of each generated token under the sampling distribution
    mask: torch.Tensor  # [B, N] bool: generated token up to and including eos
    lengths: torch.Tensor  # [B] tokens before eos (the answer-token count)
    n_passes: int


@torch.no_grad()
def generate(
    lm,
    state: LatentState,
    first_ids: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    embed: nn.Module | None = None,
) -> Generation:
    """Greedy (temperature 0) or sampled decoding, one batched cached pass per token, rows stop at eos.
    `embed` embeds the fed-back tokens (default: `lm`'s own input table; the step decoder reads text through
    the base model's table, as it was trained)."""
    B = first_ids.shape[0]
    device = first_ids.device
    emb_table, head = embed if embed is not None else lm.get_input_embeddings(), lm.get_output_embeddings()
    cur = first_ids
    mask, next_pos = state.attention_mask, state.next_position
    done = torch.zeros(B, dtype=torch.bool, device=device)
    toks, lps, valid = [], [], []
    n_passes = 0
    for _ in range(max_new_tokens):
        n = cur.shape[1]
        mask = torch.cat([mask, torch.ones(B, n, dtype=mask.dtype, device=device)], dim=1)
        position = next_pos[:, None] + torch.arange(n, device=device)[None]
        hidden = backbone_forward(lm, emb_table(cur), mask, position, state.cache)
        n_passes += 1
        next_pos = next_pos + n
        logits = head(hidden[:, -1]).float()
        if temperature > 0:
            logp = torch.log_softmax(logits / temperature, -1)
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        else:
            logp = torch.log_softmax(logits, -1)
            nxt = logits.argmax(-1)
        lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        toks.append(nxt)
        lps.append(torch.where(done, torch.zeros_like(lp), lp))
        valid.append(~done)
        done = done | (nxt == eos_id)
        if done.all():
            break
        cur = nxt[:, None]
    state.attention_mask, state.next_position = mask, next_pos
    if toks:
        tokens, logprobs, vmask = torch.stack(toks, 1), torch.stack(lps, 1), torch.stack(valid, 1)
    else:
        tokens = torch.zeros(B, 0, dtype=torch.long, device=device)
        logprobs = torch.zeros(B, 0, device=device)
        vmask = torch.zeros(B, 0, dtype=torch.bool, device=device)
    lengths = (vmask & (tokens != eos_id)).sum(-1)
    return Generation(tokens, logprobs, vmask, lengths, n_passes)
