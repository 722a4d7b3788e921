"""Tokenizers: build a small word-level one from a corpus, or extend any HF tokenizer with the latent tokens.

Both paths return a `PreTrainedTokenizerFast` with the same extras, so every later stage treats a tiny
local model and a real checkpoint alike.
"""

from __future__ import annotations

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


def add_latent_tokens(tokenizer) -> list[int]:
    """Add the latent tokens (and a pad token if missing) to an existing HF tokenizer; return their ids."""
    new = [t for t in LATENT_TOKENS if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
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
