"""LoRA through peft, injected in place: the model keeps its backbone for the engine, only adapters train, and a
saved checkpoint (base weights under their own names + peft adapters) loads back to identical logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.lora import add_lora, base_state_dict, has_lora, load_adapter, save_adapter
from atp_latent.modeling.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(["Ann has 3 cats and 4 dogs. How many pets?", "<<3+4=7>>\n### 7"])


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_lora_trains_adapters_only_and_round_trips(tok, tmp_path, preset):
    lm = build_tiny_model(preset, tok, seed=0)
    ids = torch.tensor([[1, 5, 7, 9, 4]])
    before = lm(ids).logits.detach()
    backbone = type(lm.base_model)
    add_lora(lm, r=4, alpha=32)
    assert has_lora(lm) and type(lm.base_model) is backbone  # the engine still finds the backbone
    torch.testing.assert_close(lm(ids).logits, before)  # B = 0 at init: the same function
    trainable = [n for n, p in lm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.SGD([p for p in lm.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):  # B moves after the first step, then A too
        opt.zero_grad()
        lm(ids, labels=ids).loss.backward()
        opt.step()
    after = lm(ids).logits.detach()
    assert not torch.allclose(after, before)
    base = base_state_dict(lm)
    fresh = build_tiny_model(preset, tok, seed=0)
    assert set(base) == set(fresh.state_dict())  # the class's own names: loadable without peft
    for k, v in fresh.state_dict().items():
        assert torch.equal(base[k], v), k  # frozen: the base weights did not move
    lm.save_pretrained(tmp_path / "lm", state_dict=base)
    save_adapter(lm, tmp_path / "lm_adapter")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    torch.testing.assert_close(again(ids).logits, before)  # the base alone
    load_adapter(again, tmp_path / "lm_adapter")
    torch.testing.assert_close(again(ids).logits, after, rtol=0, atol=0)


def test_lora_on_missing_modules_is_one_line(tok):
    lm = build_tiny_model("llama-tiny", tok)
    with pytest.raises(ValueError, match=r"model.lora_target_modules \['nope'\] matches no module of LlamaForCausalLM "
                                         r"\(its linear layers: .*q_proj") as e:
        add_lora(lm, r=4, alpha=32, target_modules=["nope"])
    assert "\n" not in str(e.value)
