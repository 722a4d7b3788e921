"""Model factory: tiny randomly initialised presets, or any Hugging Face causal LM by id or path.

Both paths end in the same state: a causal LM whose vocabulary holds the three latent tokens, with their
input/output embedding rows initialised from an existing token (the reference copies `<<`).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedModel

from atp_latent.modeling.tokenizer import LATENT_TOKENS, add_latent_tokens

# name -> (architecture, layers, hidden, heads, intermediate). Small enough for a 2-core CPU.
PRESETS: dict[str, tuple[str, int, int, int, int]] = {
    "llama-tiny": ("llama", 2, 128, 4, 512),
    "llama-deep": ("llama", 4, 128, 4, 512),
    "llama-small": ("llama", 4, 256, 4, 1024),
    "llama-medium": ("llama", 6, 512, 8, 2048),  # the GPU suite's model (configs/gpu/)
    "gpt2-tiny": ("gpt2", 2, 128, 4, 512),
    "gpt2-small": ("gpt2", 4, 256, 4, 1024),
    # LLaMA-3.2-1B's shape, for GPU smoke tests without downloading weights.
    "llama-1b-shape": ("llama", 16, 2048, 32, 8192),
}


def tiny_config(preset: str, vocab_size: int, pad_id: int, bos_id: int, eos_id: int, max_positions: int = 1024):
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    arch, layers, hidden, heads, inter = PRESETS[preset]
    if arch == "llama":
        kv_heads = 8 if preset == "llama-1b-shape" else heads
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
            pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, tie_word_embeddings=True,
            rope_theta=10000.0,
        )
    return GPT2Config(
        vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter, n_positions=max_positions,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def build_tiny_model(preset: str, tokenizer, seed: int = 0, dtype: torch.dtype | None = None,
                     vocab: int | None = None, device: torch.device | str | None = None) -> PreTrainedModel:
    """A randomly initialised causal LM of a named preset, sized to `tokenizer`. Built in `dtype` the way
    from_pretrained builds it (buffers such as RoPE frequencies stay fp32; `.to(dtype)` would round them, and
    a resumed run, which loads with from_pretrained, would then compute differently). `vocab` pads the vocabulary
    to that many rows (a 1B shape's embedding and logits then cost what LLaMA-3's 128,256 rows cost; rows past the
    tokenizer decode to nothing); `device` builds it there (a 1B model is initialised on the GPU, not the CPU)."""
    vocab = vocab or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    cfg = tiny_config(preset, vocab, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(), torch.device(device or torch.get_default_device()):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, **({"dtype": dtype} if dtype is not None else {}))
    return model


def init_latent_rows(model: PreTrainedModel, tokenizer, new_ids: list[int], copy_from: str = "<<") -> None:
    """Initialise the embedding rows of `new_ids` from the token `copy_from` (first sub-token if it splits)."""
    src_ids = tokenizer(copy_from, add_special_tokens=False)["input_ids"]
    if not src_ids:
        return
    src = src_ids[0]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for i in new_ids:
            emb[i] = emb[src]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            for i in new_ids:
                out.weight[i] = out.weight[src]


def load_pretrained(name_or_path: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False):
    """Load any HF causal LM and its tokenizer, add the latent tokens, initialise their rows. Returns (model, tok).

    `dtype` None keeps the checkpoint's dtype (on transformers 4.x as on 5.x)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:  # 4.x: a folder without vocab files fails with TypeError
        raise ValueError(f"{name_or_path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    try:
        # None means the checkpoint's own dtype: transformers 5.x's default, while 4.x would load fp32.
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype if dtype is not None else "auto", trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{name_or_path}: not a loadable causal LM ({str(e).splitlines()[0]})") from None
    before = len(tokenizer)
    add_latent_tokens(tokenizer)
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS]
    if len(tokenizer) != before or len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    init_latent_rows(model, tokenizer, [i for i in new_ids if i >= before])
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
