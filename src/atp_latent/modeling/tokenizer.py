"""Tokenizers: build a small word-level one from a corpus, or extend any HF tokenizer with the latent tokens.

Both paths return a `PreTrainedTokenizerFast` with the same extras, so every later stage treats a tiny
local model and a real checkpoint alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

START_LATENT = "<|start-latent|>"
LATENT = "<|latent|>"
END_LATENT = "<|end-latent|>"
LATENT_TOKENS = (START_LATENT, LATENT, END_LATENT)

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
# Metaspace keeps spaces recoverable on decode; digits are split one per token so numbers of any size are
# spelled from ten symbols; punctuation (incl. `<<`, `=`, `#`) is one token per character.
_SPACE = "\u2581"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )


def build_word_tokenizer(corpus: Iterable[str], max_vocab: int = 4096, min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Word-level tokenizer trained on `corpus`, with pad/bos/eos/unk and the three latent tokens."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True)
    specials = [PAD, BOS, EOS, UNK, *LATENT_TOKENS]
    # Digits and the symbols used by equations are always present, whatever the corpus holds.
    base = list("0123456789") + [_SPACE, *"+-*/=<>#.,?$()%:'\"!", "\n"]
    trainer = trainers.WordLevelTrainer(vocab_size=max_vocab, min_frequency=min_frequency, special_tokens=specials)
    tok.train_from_iterator([*base, *corpus], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=list(LATENT_TOKENS),
    )
    fast.padding_side = "left"
    return fast


# The add_special_tokens keyword that keeps the tokenizer's own extra special tokens (a chat model's tool or
# image tokens) instead of replacing them: renamed in transformers 5.x.
_KEEP_SPECIALS_KW = ("replace_extra_special_tokens", "replace_additional_special_tokens")  # 5.x, 4.x


def _add_extra_specials(tokenizer, new: list[str]) -> None:
    """Add `new` as extra special tokens, keeping the existing ones, on transformers 4.x and 5.x alike."""
    try:
        params = inspect.signature(tokenizer.add_special_tokens).parameters
    except (TypeError, ValueError):
        params = {}
    kw = next((k for k in _KEEP_SPECIALS_KW if k in params), None)
    if kw is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, **{kw: False})
        return
    # Neither keyword: the call replaces the list, so pass the existing tokens along with the new ones.
    old = [str(t) for t in (getattr(tokenizer, "additional_special_tokens", None) or [])]
    tokenizer.add_special_tokens({"additional_special_tokens": old + [t for t in new if t not in old]})


def add_latent_tokens(tokenizer) -> list[int]:
    """Add the latent tokens (and a pad token if missing) to an existing HF tokenizer; return their ids."""
    new = [t for t in LATENT_TOKENS if t not in tokenizer.get_vocab()]
    if new:
        _add_extra_specials(tokenizer, new)
    if tokenizer.pad_token is None:
        # Reference pads with eos; we keep pad = eos for pretrained tokenizers (never stripped by id: masks decide).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return [tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS]


def latent_token_ids(tokenizer) -> tuple[int, int, int]:
    ids = tuple(tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS)
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("tokenizer lacks the latent tokens; call add_latent_tokens first")
    return ids  # type: ignore[return-value]
