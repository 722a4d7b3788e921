"""Adding the latent tokens to any HF tokenizer, on transformers 4.x and 5.x (add_special_tokens' keyword differs)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from atp_latent.modeling.factory import load_pretrained
from atp_latent.modeling.tokenizer import LATENT_TOKENS, add_latent_tokens, latent_token_ids


class _Fake:
    """Just the tokenizer surface add_latent_tokens uses; vocab a, b, </s> (ids 0-2) and one extra special."""

    def __init__(self):
        self.vocab = {"a": 0, "b": 1, "</s>": 2, "<tool>": 3}
        self.additional_special_tokens = ["<tool>"]
        self.eos_token, self.pad_token, self.padding_side = "</s>", None, "right"
        self.calls = []

    def get_vocab(self):
        return dict(self.vocab)

    def convert_tokens_to_ids(self, t):
        return self.vocab.get(t)

    def _add(self, special_tokens_dict, replace, kwargs):
        self.calls.append(kwargs)
        (key,) = special_tokens_dict
        assert key == "additional_special_tokens"
        tokens = list(special_tokens_dict[key])
        self.additional_special_tokens = tokens if replace else self.additional_special_tokens + tokens
        for t in tokens:
            self.vocab.setdefault(t, len(self.vocab))
        return len(tokens)


class Fake4x(_Fake):
    """transformers 4.56-4.57: the keyword is replace_additional_special_tokens (a 5.x keyword is a TypeError)."""

    def add_special_tokens(self, special_tokens_dict, replace_additional_special_tokens=True):
        kw = {"replace_additional_special_tokens": replace_additional_special_tokens}
        return self._add(special_tokens_dict, replace_additional_special_tokens, kw)


class Fake5x(_Fake):
    """transformers 5.x: the keyword is replace_extra_special_tokens."""

    def add_special_tokens(self, special_tokens_dict, replace_extra_special_tokens=True):
        kw = {"replace_extra_special_tokens": replace_extra_special_tokens}
        return self._add(special_tokens_dict, replace_extra_special_tokens, kw)


class FakeNoKeyword(_Fake):
    """A tokenizer whose add_special_tokens always replaces the extra specials."""

    def add_special_tokens(self, special_tokens_dict):
        return self._add(special_tokens_dict, True, {})


@pytest.mark.parametrize("cls,kwargs", [
    (Fake4x, [{"replace_additional_special_tokens": False}]),
    (Fake5x, [{"replace_extra_special_tokens": False}]),
    (FakeNoKeyword, [{}]),
])
def test_add_latent_tokens_each_generation(cls, kwargs):
    tok = cls()
    ids = add_latent_tokens(tok)
    assert ids == [4, 5, 6]  # appended after the 4 existing entries, in LATENT_TOKENS order
    assert tok.calls == kwargs  # the keyword this generation knows, set to keep the existing specials
    assert tok.additional_special_tokens == ["<tool>", *LATENT_TOKENS]  # <tool> kept in every case
    assert tok.pad_token == "</s>" and tok.padding_side == "left"
    add_latent_tokens(tok)  # a second call adds nothing
    assert len(tok.calls) == 1 and len(tok.vocab) == 7


def word_level_tokenizer(extra=()):
    """A plain HF fast tokenizer (no latent tokens, no pad), as a pretrained checkpoint would ship one."""
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<", "=", "+", "1", "2", "3", "x", *extra])}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=inner, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=list(extra),
    )


def test_real_tokenizer_keeps_its_own_special_tokens():
    # Whatever transformers is installed: the latent tokens are added as special tokens, never split, and a
    # special token the tokenizer already had stays special (the call must not replace the list).
    tok = word_level_tokenizer(extra=("<tool>",))
    assert len(tok) == 11
    ids = add_latent_tokens(tok)
    assert ids == [11, 12, 13] and tuple(ids) == latent_token_ids(tok)
    assert {"<tool>", *LATENT_TOKENS} <= set(tok.all_special_tokens)
    assert tok("x <|latent|><|end-latent|>", add_special_tokens=False)["input_ids"] == [9, 12, 13]
    assert tok.decode([9, 10, 12], skip_special_tokens=True).strip() == "x"
    assert tok.pad_token == "</s>" and tok.padding_side == "left"


def test_load_pretrained_round_trip(tmp_path):
    # A local checkpoint exercises AutoTokenizer/AutoModel loading, resizing and the `<<` row copy.
    tok = word_level_tokenizer()
    tok.save_pretrained(tmp_path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    model, tok2 = load_pretrained(str(tmp_path), dtype=torch.float32)
    start, latent, end = latent_token_ids(tok2)
    assert (start, latent, end) == (10, 11, 12)
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] >= 13 and out.shape[0] >= 13
    lt = tok2.convert_tokens_to_ids("<")  # "<<" splits into "<", "<": its first sub-token is copied
    for i in (start, latent, end):
        torch.testing.assert_close(emb[i], emb[lt])
        torch.testing.assert_close(out[i], out[lt])
    assert model.config.pad_token_id == tok2.pad_token_id == 2
    with torch.no_grad():
        logits = model(torch.tensor([[1, 9, start, latent, end]])).logits
    assert logits.shape == (1, 5, emb.shape[0]) and torch.isfinite(logits).all()


def test_load_pretrained_keeps_the_checkpoint_dtype(tmp_path):
    # dtype None: the checkpoint's own dtype (transformers 5.x's default; 4.x alone would give float32).
    word_level_tokenizer().save_pretrained(tmp_path)
    cfg = LlamaConfig(vocab_size=10, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    assert load_pretrained(str(tmp_path))[0].dtype == torch.bfloat16
    assert load_pretrained(str(tmp_path), dtype=torch.float32)[0].dtype == torch.float32
