"""LatentReasoner: a causal LM plus the method's heads and step decoder; its losses; save and load.

Methods are configurations of this one module (METHOD.md §4-§7); what each one turns on is declared in its
module under modeling/methods/ (the registry, docs/methods.md):
  cot / nocot   no latents (the language baselines)
  coconut       latent embedding = last hidden state
  simcot        coconut + step decoder supervision
  atp           VAE latent head (+KL) + stop head + step decoder
  codi          latent embedding = projector(h); the teacher task (explicit CoT) distilled into the student
  colar         compressed chain in one teacher-forced pass; latent head -> next group's embedding; LM-head stop
The losses belong to the parts (KL to the VAE head, stop CE to the stop head, decoder CE to the decoder, teacher CE
and distillation to the teacher task), so an ablation that turns a part on or off in any method keeps its loss.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from atp_latent.modeling.compressed import compressed_losses
from atp_latent.modeling.engine import (
    LatentState,
    backbone_forward,
    fill_latents,
    generate,
    new_cache,
    teacher_force_hidden,
)
from atp_latent.modeling.heads import (
    LatentHead,
    Projector,
    StopHead,
    distill_loss,
    gaussian_log_density,
    kl_to_standard_normal,
)
from atp_latent.modeling.lora import ADAPTER_DIR, DECODER_ADAPTER_DIR, has_lora, load_part_adapter, save_part
from atp_latent.modeling.methods import METHODS as _REGISTRY
from atp_latent.modeling.methods import MethodDef, get_method
from atp_latent.modeling.precision import casts_frozen_weights

METHODS = tuple(_REGISTRY)  # the registered method names (kept for older imports)


@dataclass
class ReasonerSpec:
    """What the reasoner is made of; saved with every checkpoint as reasoner.json."""

    method: str = "cot"
    latents_per_step: int = 2  # c
    use_vae: bool = False
    use_stop_head: bool = False
    use_decoder: bool = False
    decoder_mode: str = "separate"  # separate | shared
    decoder_trainable: bool = True
    beta_kl: float = 0.001
    stop_loss_positions: str = "group_start"  # group_start (ours) | all (reference)
    stop_head_detached: bool = False  # ablation: the stop loss trains the stop head only, not the LM through z
    decoder_weight: float = 1.0
    latent_head_residual: bool = False  # mu = h + f(h), f zero at init: start from Coconut's feedback (ours)
    init_logvar: float | None = None  # None: the reference's random init of the logvar layer
    max_latent_stage: int = 10  # evaluation fills max_latent_stage * c latent slots
    # CODI (methods/codi.py): latent feedback through a projector, and the teacher task (explicit CoT in the same LM,
    # CE x teacher_weight) distilled into the student at the token before the answer (x distill_weight)
    use_projector: bool = False
    projector_dim: int | None = None  # None: the hidden size
    use_teacher: bool = False
    distill_weight: float = 1.0
    distill_loss: str = "smooth_l1"  # smooth_l1 | l2
    distill_div_std: bool = True
    teacher_weight: float = 1.0
    teacher_drop_last_step: bool = True  # upstream's include_last_cot False
    # CoLaR (methods/colar.py, modeling/compressed.py): the LM head ends the chain by emitting <|end-latent|>; the
    # latent head predicts the next compressed embedding / emb_std and latents are fed back as emb_std x z
    lm_head_stop: bool = False
    max_compression: int = 5  # training draws c from 1..max_compression per batch
    eval_compression: int = 2  # the c written in the prompt at evaluation and in RL
    latent_loss: str = "mse"  # mse (on a sample) | nll
    latent_weight: float = 1.0
    emb_std: float | None = None  # None: the std of the input-embedding table, measured once when the model is built

    @property
    def eval_slots(self) -> int:
        return self.max_latent_stage * self.latents_per_step if self.latent else 0

    @classmethod
    def for_method(cls, method: str, **overrides) -> ReasonerSpec:
        """The method's defaults (its MethodDef.spec_defaults), then every override that is not None."""
        flags = get_method(method).spec_defaults
        return cls(method=method, **{**flags, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def method_def(self) -> MethodDef:
        return get_method(self.method)

    @property
    def latent(self) -> bool:
        return self.method_def.latent


class LatentReasoner(nn.Module):
    def __init__(self, lm, spec: ReasonerSpec, decoder=None):
        super().__init__()
        self.lm = lm
        self.spec = spec
        d = lm.config.get_text_config().hidden_size if hasattr(lm.config, "get_text_config") else lm.config.hidden_size
        # The heads follow the LM's dtype and device, so a bf16 model runs without autocast too.
        weight = lm.get_input_embeddings().weight
        self.latent_head = LatentHead(d, spec.latent_head_residual, spec.init_logvar).to(weight.device, weight.dtype) \
            if spec.use_vae else None
        self.stop_head = StopHead(d, spec.stop_head_detached).to(weight.device, weight.dtype) if spec.use_stop_head else None
        self.projector = Projector(d, spec.projector_dim).to(weight.device, weight.dtype) if spec.use_projector else None
        if spec.method_def.chain == "compressed" and spec.emb_std is None:  # measured once, then saved with the spec
            spec.emb_std = float(weight.detach().float().std())
        self.decoder = None
        if spec.use_decoder and spec.decoder_mode == "separate":
            self.decoder = decoder if decoder is not None else copy.deepcopy(lm)
            self.decoder.requires_grad_(spec.decoder_trainable)
            if has_lora(self.decoder):  # a copy of a LoRA LM: its adapters train, its base stays frozen
                for name, p in self.decoder.named_parameters():
                    p.requires_grad_(spec.decoder_trainable and "lora_" in name)

    # ----- the latent engine, with this reasoner's heads -----
    def fill(self, prefix_ids, prefix_mask, n_slots, end_id: int | None = None, **kw) -> LatentState:
        """The engine with this reasoner's heads. `end_id` (<|end-latent|>) is needed when the LM head stops."""
        if self.spec.lm_head_stop and end_id is None and n_slots.numel() and int(n_slots.max()) > 0:
            raise ValueError("lm_head_stop: fill needs end_id, the token whose emission ends the chain")
        return fill_latents(self.lm, prefix_ids, prefix_mask, n_slots, latent_head=self.latent_head,
                            stop_head=self.stop_head, c=self.spec.latents_per_step, projector=self.projector,
                            lm_stop_id=end_id if self.spec.lm_head_stop else None,
                            latent_scale=self.spec.emb_std if self.spec.emb_std is not None else 1.0, **kw)

    def latent_embeddings(self, z: torch.Tensor) -> torch.Tensor:
        """What the LM reads for latents z (CoLaR's are scaled by emb_std)."""
        return z * self.spec.emb_std if self.spec.emb_std is not None else z

    @property
    def step_decoder(self):
        return self.decoder if self.decoder is not None else self.lm

    # ----- SFT losses -----
    @casts_frozen_weights  # LoRA's frozen base: one bf16 copy per call, not per latent pass (modeling/precision.py)
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Teacher-forced SFT pass; returns each loss term, their weighted total and latent-usage stats.
        A batch holding an RL trajectory (`rl_z`) is scored instead (see `score`)."""
        if "rl_z" in batch:
            return self.score(batch)
        if "comp_ids" in batch:  # CoLaR's compressed chain: one teacher-forced pass (modeling/compressed.py)
            return compressed_losses(self, batch)
        teacher = self.spec.use_teacher and "teacher_ids" in batch
        taught: dict[str, torch.Tensor] = {}  # the teacher pass's CE and states, run right after the question
        state = self.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"],
                          stop_mode="forced", forced_active=batch["active"], sample_latents=self.training,
                          after_prefix=functools.partial(self.teacher_pass, batch, taught) if teacher else None)
        hidden = teacher_force_hidden(self.lm, state, batch["suffix_ids"], batch["suffix_mask"], all_layers=teacher)
        if teacher:
            hidden, layers = hidden
        targets = batch["labels"][:, 1:]
        labelled = targets != -100  # the output head runs only where a label is
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][labelled]).float()
        ce = F.cross_entropy(logits, targets[labelled]) if labelled.any() else logits.sum() * 0.0
        zero = ce.new_zeros(())
        out = {"ce": ce, "kl": zero, "decoder": zero, "stop": zero, "distill": zero, "ce_teacher": zero}
        if teacher:
            out["ce_teacher"] = taught["ce"]
            out["distill"] = self.distill(layers, taught["states"], batch)
        active = batch["active"][:, : state.z.shape[1]]
        if self.latent_head is not None:
            out["sigma"] = zero  # logged as train/sigma; every process logs the same keys (DDP's reduce)
        if self.latent_head is not None and active.any():
            kl = kl_to_standard_normal(state.mu, state.logvar).mean(-1)
            out["kl"] = (kl * active).sum() / active.sum()
            # The mean std of the active latents: watch it rise when nothing but the KL acts on it (no decoder).
            sigma = torch.exp(0.5 * state.logvar.detach().float()).mean(-1)
            out["sigma"] = (sigma * active).sum() / active.sum()
        if self.stop_head is not None and state.z.shape[1] > 0:
            out["stop"] = self.stop_loss(state, batch)
        if self.spec.use_decoder and "dec_ids" in batch:
            out["decoder"] = self.decoder_loss(state.z, batch)
        out["loss"] = ce + self.spec.beta_kl * out["kl"] + self.spec.decoder_weight * out["decoder"] + out["stop"] \
            + self.spec.distill_weight * out["distill"] + self.spec.teacher_weight * out["ce_teacher"]
        out["active_latents"] = active.sum(-1).float().mean()
        return out

    def teacher_pass(self, batch, taught: dict, cache, prefix_mask, next_position) -> int:
        """CODI's teacher task, question + CoT + answer, as the question's continuation in the student's cache (the
        engine's `after_prefix`: the question is computed once for both). Stores its CE on CoT and answer and HF's
        hidden_states of every layer at the token before the answer (`teacher_pos`) in `taught`. One pass, with
        gradient for its CE; the distillation detaches the states (upstream runs a second, no-grad teacher pass for
        them, which computes the same values)."""
        ids, tmask = batch["teacher_ids"], batch["teacher_mask"].long()
        mask = torch.cat([prefix_mask, tmask], dim=1)
        position = next_position[:, None] + (tmask.cumsum(-1) - 1).clamp(min=0)
        last, layers = backbone_forward(self.lm, self.lm.get_input_embeddings()(ids), mask, position, cache,
                                        all_layers=True)
        targets = batch["teacher_labels"][:, 1:]
        labelled = targets != -100
        logits = self.lm.get_output_embeddings()(last[:, :-1][labelled]).float()
        taught["ce"] = F.cross_entropy(logits, targets[labelled]) if labelled.any() else logits.sum() * 0.0
        rows = torch.arange(ids.shape[0], device=ids.device)
        taught["states"] = torch.stack([h[rows, batch["teacher_pos"]] for h in layers])  # [L + 1, B, d]
        return ids.shape[1]

    def distill(self, student_layers, teacher_states, batch) -> torch.Tensor:
        """CODI's distillation of the teacher's states into the student's, every layer, at the token before the
        answer in the student's suffix (`student_pos`)."""
        rows = torch.arange(teacher_states.shape[1], device=teacher_states.device)
        s_states = torch.stack([h[rows, batch["student_pos"]] for h in student_layers])
        return distill_loss(s_states, teacher_states, self.spec.distill_loss, self.spec.distill_div_std)

    def lm_logits(self, state: LatentState, suffix_ids, suffix_mask, where: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the suffix after the latents: [B, S, V], or [n, V] at the positions `where` is true."""
        hidden = teacher_force_hidden(self.lm, state, suffix_ids, suffix_mask)
        return self.lm.get_output_embeddings()(hidden if where is None else hidden[where])

    def stop_loss(self, state: LatentState, batch) -> torch.Tensor:
        """CE of the stop head; label 1 at slots beyond the record's steps (surplus), else 0."""
        L = state.z.shape[1]
        c = self.spec.latents_per_step
        slot = torch.arange(L, device=state.z.device)[None]
        in_range = slot < batch["n_slots"][:, None]
        labels = (~batch["active"][:, :L]).long()
        if self.spec.stop_loss_positions == "group_start":
            where = in_range & (slot % c == 0)
            logits = state.stop_logits
            return F.cross_entropy(logits[where].float(), labels[where])
        logits = self.stop_head(state.z)  # reference: every latent position, summed / number of groups
        ce = F.cross_entropy(logits[in_range].float(), labels[in_range], reduction="sum")
        n_groups = (batch["n_slots"].max() + c - 1) // c
        return ce / (n_groups * labels.shape[0]).clamp(min=1)

    def decoder_inputs(self, z: torch.Tensor, rows, groups) -> torch.Tensor:
        c = self.spec.latents_per_step
        idx = groups[:, None] * c + torch.arange(c, device=z.device)[None]  # [N, c]
        return z[rows[:, None], idx]  # [N, c, d]

    def decoder_loss(self, z: torch.Tensor, batch) -> torch.Tensor:
        """(1/T) sum over groups of (summed token CE over the group's targets / number of targets)."""
        rows, groups, ids, mask = batch["dec_rows"], batch["dec_groups"], batch["dec_ids"], batch["dec_mask"]
        keep = groups * self.spec.latents_per_step < z.shape[1]
        rows, groups, ids, mask = rows[keep], groups[keep], ids[keep], mask[keep]
        if rows.numel() == 0:
            return z.new_zeros(())
        logits = self.decoder_logits(self.decoder_inputs(z, rows, groups), ids, mask.bool())
        tok_ce = torch.zeros(ids.shape, device=z.device)
        tok_ce[mask.bool()] = F.cross_entropy(logits, ids[mask.bool()], reduction="none")
        per_pair = tok_ce.sum(-1)
        n_groups = int(groups.max()) + 1
        sums = torch.zeros(n_groups, device=z.device).index_add(0, groups, per_pair)
        counts = torch.zeros(n_groups, device=z.device).index_add(0, groups, torch.ones_like(per_pair))
        present = counts > 0
        return (sums[present] / counts[present]).sum() / present.sum()

    def decoder_logits(self, zg: torch.Tensor, ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Teacher-forced step decoder: latent group zg [N, c, d] then the step text ids [N, S] embedded with
        the base model's table (METHOD.md §6); logits [n, V] predicting ids at the positions `where` is true."""
        c = zg.shape[1]
        dec = self.step_decoder
        text = self.lm.get_input_embeddings()(ids[:, :-1])
        embeds = torch.cat([zg.to(text.dtype), text], dim=1)
        attn = torch.cat([where.new_ones(where.shape[0], c, dtype=torch.long), where[:, :-1].long()], dim=1)
        pos = torch.arange(embeds.shape[1], device=zg.device)[None].expand(embeds.shape[0], -1)
        hidden = dec.base_model(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
        return dec.get_output_embeddings()(hidden[:, c - 1:][where]).float()

    # ----- RL: log-probabilities of sampled trajectories -----
    def score(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-position log-probs of trajectories sampled by `answer(sample_latents=True, stop_mode="sample")`,
        recomputed by teacher forcing the same latents, stop decisions and answer tokens (METHOD.md §8):
          latent [N, L]: Gaussian log-density of z_t (+ log p(continue) where the stop head let it continue)
          stop   [N]:    log p(stop) at the slot where the stop head fired (0 where it never fired)
          answer [N, T]: token log-probs at the sampling temperature `batch["rl_temperature"]` (default 1).
        `batch["rl_latent_scale"]` (optional) scales the Gaussian term (1/d: the per-dimension mean; 0: latents at
        their mean are no action, rl.latent_policy=mean).
        `batch["rl_latent_temperature"]` (optional, k): z is scored under N(mu, (k sigma)^2), the density it came from.
        It is reached through `forward`, so a DDP-wrapped model scores (and synchronises gradients) alike."""
        state = self.fill(batch["prefix_ids"], batch["prefix_mask"], batch["n_slots"], end_id=int(batch["end_id"]),
                          stop_mode="forced", forced_active=batch["rl_active"], forced_z=batch["rl_z"])
        L = batch["rl_active"].shape[1]
        latent = torch.zeros(batch["rl_active"].shape, device=state.z.device)
        stop = torch.zeros(latent.shape[0], device=state.z.device)
        if self.latent_head is not None and L:
            k = float(batch["rl_latent_temperature"]) if "rl_latent_temperature" in batch else 1.0
            latent = gaussian_log_density(batch["rl_z"], state.mu, state.logvar, k)
            if "rl_latent_scale" in batch:  # rl.latent_logratio=mean: per-dimension mean; latent_policy=mean: 0
                latent = latent * batch["rl_latent_scale"].float()
        if state.stop_logits is not None and L:
            lp = torch.log_softmax(state.stop_logits.float(), -1)
            if not self.spec.lm_head_stop:  # CoLaR scores no "continue" decision, only the stop
                cont = batch["rl_consulted"] & ~batch["rl_stopped"]
                latent = latent + torch.where(cont, lp[..., 0], torch.zeros_like(latent))
            stop = (lp[..., 1] * batch["rl_stopped"]).sum(-1)
        latent = latent * batch["rl_active"]
        tokens, tmask = batch["rl_tokens"], batch["rl_token_mask"]
        end = torch.full_like(tokens[:, :1], int(batch["end_id"]))
        inputs = torch.cat([end, tokens[:, :-1]], dim=1)
        temperature = float(batch["rl_temperature"]) if "rl_temperature" in batch else 1.0
        where = tmask.bool()
        logits = self.lm_logits(state, inputs, tmask.long(), where).float() / temperature
        answer = torch.zeros(tokens.shape, device=logits.device)
        answer[where] = torch.log_softmax(logits, -1).gather(-1, tokens[where][:, None]).squeeze(-1)
        if self.spec.lm_head_stop:  # CoLaR: the emitted <|end-latent|> is the answer's first token (rl.stream_masks)
            return {"latent": latent, "stop": torch.zeros_like(stop), "answer": torch.cat([stop[:, None], answer], 1)}
        return {"latent": latent, "stop": stop, "answer": answer}

    # ----- inference -----
    @torch.no_grad()
    @casts_frozen_weights
    def answer(self, prefix_ids, prefix_mask, n_slots, end_id: int, eos_id: int, pad_id: int, max_new_tokens: int,
               sample_latents: bool = False, stop_mode: str = "greedy", temperature: float = 0.0, generator=None,
               latent_temperature: float = 1.0):
        """Fill the latents and decode the answer after <|end-latent|>. Returns (LatentState, Generation)."""
        state = self.fill(prefix_ids, prefix_mask, n_slots, end_id, sample_latents=sample_latents, stop_mode=stop_mode,
                          generator=generator, latent_temperature=latent_temperature)
        first = torch.full((prefix_ids.shape[0], 1), end_id, dtype=torch.long, device=prefix_ids.device)
        gen = generate(self.lm, state, first, max_new_tokens, eos_id, pad_id, temperature, generator)
        return state, gen

    @torch.no_grad()
    @casts_frozen_weights
    def decode_groups(self, zg: torch.Tensor, eos_id: int, pad_id: int, max_new_tokens: int = 16,
                      text_embed: nn.Module | None = None) -> torch.Tensor:
        """Greedy text of each latent group zg [N, c, d] through the step decoder, batched and KV-cached:
        [N, T] ids, pad after each row's eos, T <= max(max_new_tokens, 1) (decoding ends once every row has
        written eos). Rows that have written eos leave the batch and the cache (every group is decoded alone, so
        this changes nothing for the others), so ended groups stop costing: once the passes they would still take
        add up to a quarter of a batch pass, about what copying the cache without them costs.

        Generated tokens are fed back through the table the decoder was trained with: the base model's
        (METHOD.md §6), or `text_embed`, e.g. RL's frozen snapshot of it taken when RL started."""
        dec = self.step_decoder
        text_embed = text_embed if text_embed is not None else self.lm.get_input_embeddings()
        head = dec.get_output_embeddings()
        N, c, _ = zg.shape
        cache = new_cache(dec)
        mask = torch.ones(N, c, dtype=torch.long, device=zg.device)
        pos = torch.arange(c, device=zg.device)[None].expand(N, -1)
        hidden = backbone_forward(dec, zg.to(text_embed.weight.dtype), mask, pos, cache)
        nxt = head(hidden[:, -1]).argmax(-1)
        columns = [nxt]
        live = torch.arange(N, device=zg.device)  # the zg row of each batch row
        done = torch.zeros(N, dtype=torch.bool, device=zg.device)  # batch rows that have written eos
        for t in range(1, max_new_tokens):
            done = done | (nxt == eos_id)
            if done.all():
                break
            if 4 * int(done.sum()) * (max_new_tokens - t) >= done.numel():  # drop the ended rows
                keep = (~done).nonzero().flatten()
                cache.reorder_cache(keep)
                live, nxt, done = live[keep], nxt[keep], done[keep]
            n = live.numel()
            mask = torch.ones(n, c + t, dtype=torch.long, device=zg.device)
            pos = torch.full((n, 1), c + t - 1, dtype=torch.long, device=zg.device)
            hidden = backbone_forward(dec, text_embed(nxt[:, None]), mask, pos, cache)
            nxt = torch.where(done, pad_id, head(hidden[:, -1]).float().argmax(-1))
            column = torch.full((N,), pad_id, dtype=nxt.dtype, device=zg.device)
            column[live] = nxt
            columns.append(column)
        return torch.stack(columns, dim=1)

    # ----- persistence -----
    def save_pretrained(self, path: str | Path, tokenizer=None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_part(self.lm, path / "lm", path / ADAPTER_DIR)  # LoRA: base weights in lm/, adapters in lm_adapter/
        if tokenizer is not None:
            tokenizer.save_pretrained(path / "lm")
        heads = {}
        for name in ("latent_head", "stop_head", "projector"):
            mod = getattr(self, name)
            if mod is not None:
                heads.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in mod.state_dict().items()})
        if heads:
            save_file(heads, str(path / "heads.safetensors"))
        if self.decoder is not None:
            save_part(self.decoder, path / "decoder", path / DECODER_ADAPTER_DIR)
        (path / "reasoner.json").write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, spec: ReasonerSpec | None = None):
        """Load a checkpoint written by save_pretrained. Returns (reasoner, tokenizer).

        `spec` may change the method (e.g. start an ATP run from a CoT checkpoint): heads that the
        checkpoint lacks are freshly initialised and a missing separate decoder is copied from the LM.
        """
        path = Path(path)
        if not (path / "reasoner.json").is_file() or not (path / "lm").is_dir():
            raise ValueError(f"{path}: not a checkpoint (missing reasoner.json or lm/)")
        saved = ReasonerSpec(**json.loads((path / "reasoner.json").read_text()))
        spec = spec or saved
        if spec.emb_std is None and saved.emb_std is not None:  # measured when the checkpoint's run began: keep it
            spec = dataclasses.replace(spec, emb_std=saved.emb_std)
        dtype = dtype if dtype is not None else "auto"  # the saved dtype (4.x would default to fp32, 5.x does this)
        lm = AutoModelForCausalLM.from_pretrained(path / "lm", dtype=dtype)
        load_part_adapter(lm, path / ADAPTER_DIR)  # before a missing decoder is copied from the LM: it copies them
        tokenizer = AutoTokenizer.from_pretrained(path / "lm")
        decoder = None
        if spec.use_decoder and spec.decoder_mode == "separate" and (path / "decoder").is_dir():
            decoder = AutoModelForCausalLM.from_pretrained(path / "decoder", dtype=dtype)
            load_part_adapter(decoder, path / DECODER_ADAPTER_DIR)
        model = cls(lm, spec, decoder=decoder)
        if (path / "heads.safetensors").is_file():
            state = load_file(str(path / "heads.safetensors"))
            for name in ("latent_head", "stop_head", "projector"):
                mod = getattr(model, name)
                sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                if mod is not None and sub:
                    mod.load_state_dict(sub)
        return model, tokenizer
