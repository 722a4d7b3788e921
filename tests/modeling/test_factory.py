import pytest
import torch

from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(["one two three plus minus times equals"])


def test_build_tiny_model_is_seeded_and_pads_the_vocabulary(tok):
    """Same seed, same weights (also with the tokenizer's size or the device named explicitly); a padded vocabulary
    has that many embedding and logit rows; one below the tokenizer's size is refused."""
    a = build_tiny_model("llama-tiny", tok, seed=3)
    b = build_tiny_model("llama-tiny", tok, seed=3, vocab=len(tok), device="cpu")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    c = build_tiny_model("llama-tiny", tok, seed=4)
    assert not torch.equal(a.get_input_embeddings().weight, c.get_input_embeddings().weight)
    padded = build_tiny_model("llama-tiny", tok, seed=3, vocab=len(tok) + 50)
    assert padded.get_input_embeddings().weight.shape[0] == len(tok) + 50
    assert padded(torch.tensor([[1, 2]])).logits.shape[-1] == len(tok) + 50
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_tiny_model("llama-tiny", tok, vocab=len(tok) - 1)
