"""`new_cache`'s GrowingLayer against transformers' own DynamicCache: the same hidden states pass for pass (with a
batch that shrinks, a crop, a batch selection), appends that do not move earlier columns, and autograd through it."""

import pytest
import torch
from transformers import DynamicCache

from atp_latent.modeling.engine import GrowingLayer, backbone_forward, new_cache
from atp_latent.modeling.factory import build_tiny_model
from atp_latent.modeling.tokenizer import build_word_tokenizer

B, P = 4, 5  # rows, prefix columns


@pytest.fixture(scope="module")
def lm():
    tok = build_word_tokenizer(["Tom has 3 apples and 4 pears.", "How many fruits does he have?"])
    model = build_tiny_model("llama-tiny", tok, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger weights, so that the hidden states depend strongly on every cached column
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model


def _passes(lm, cache, x, edits=()):
    """Prefix pass, then one column per pass; `edits` maps a pass index to a function applied to the cache first
    (it returns the rows kept). Returns the last column's hidden state of every pass, rows in original order."""
    rows = torch.arange(x.shape[0])
    outs = [backbone_forward(lm, x[:, :P], torch.ones(len(rows), P, dtype=torch.long),
                             torch.arange(P)[None].expand(len(rows), -1), cache)[:, -1]]
    n = P  # columns in the cache
    edits = dict(edits)
    for t in range(P, x.shape[1]):
        if t in edits:
            rows, n = edits[t](cache, rows, n)
        h = backbone_forward(lm, x[rows, t:t + 1], torch.ones(len(rows), n + 1, dtype=torch.long),
                             torch.full((len(rows), 1), n), cache)[:, -1]
        n += 1
        full = torch.zeros(x.shape[0], h.shape[-1], dtype=h.dtype)
        full[rows] = h
        outs.append(full)
    return torch.stack(outs)


def _shrink(cache, rows, n):  # the step decoder's path: rows that ended leave the batch
    keep = torch.tensor([0, 2, 3])[: len(rows) - 1]
    cache.reorder_cache(keep)
    return rows[keep], n


def _crop(cache, rows, n):  # what DynamicLayer.crop does (its argument's sign differs across transformers 5.x)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :-2, :], layer.values[..., :-2, :]
    return rows, n - 2


def _select(cache, rows, n):
    keep = torch.tensor([1, 0])
    cache.batch_select_indices(keep)
    return rows[keep], n


def test_new_cache_uses_growing_layers(lm):
    cache = new_cache(lm)
    assert cache.layers and all(type(layer) is GrowingLayer for layer in cache.layers)


@pytest.mark.parametrize("edits", [(), ((8, _shrink),), ((7, _shrink), (11, _crop)), ((9, _select), (12, _shrink))],
                         ids=["plain", "shrink", "shrink-crop", "select-shrink"])
def test_growing_cache_equals_dynamic_cache(lm, edits):
    x = torch.randn(B, P + 30, lm.config.hidden_size, generator=torch.Generator().manual_seed(2))  # past the headroom
    with torch.no_grad():
        ours = _passes(lm, new_cache(lm), x, edits)
        theirs = _passes(lm, DynamicCache(config=lm.config), x, edits)
    assert (ours[1:] - ours[:-1]).abs().max() > 0.1  # each pass sees something else
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_growing_cache_appends_without_moving_earlier_columns(lm):
    cache = new_cache(lm)
    x = torch.randn(B, P + 8, lm.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _passes(lm, cache, x[:, :P + 1])
        layer = cache.layers[0]
        ptr, first = layer.keys.data_ptr(), layer.keys[..., :P + 1, :].clone()
        for t in range(P + 1, P + 8):  # within the headroom: written in place, nothing copied
            backbone_forward(lm, x[:, t:t + 1], torch.ones(B, t + 1, dtype=torch.long), torch.full((B, 1), t), cache)
            assert layer.keys.data_ptr() == ptr and layer.keys.shape[-2] == t + 1
    assert torch.equal(layer.keys[..., :P + 1, :], first)


def test_growing_cache_under_autograd_matches_dynamic_cache(lm):
    """SFT runs the latent passes through the cache with grad: columns that require grad are concatenated (writing
    them into a buffer an earlier pass saved for backward would fail), and the gradients are transformers'."""
    x = torch.randn(B, P + 4, lm.config.hidden_size, generator=torch.Generator().manual_seed(4))
    grads = []
    for make in (new_cache, lambda m: DynamicCache(config=m.config)):
        lm.zero_grad()
        xi = x.clone().requires_grad_(True)
        _passes(lm, make(lm), xi).pow(2).sum().backward()
        grads.append((xi.grad.clone(), lm.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    for ours, theirs in zip(*grads):
        assert ours.abs().max() > 0
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_growing_cache_equals_dynamic_cache_in_bf16(lm):
    """RL rollouts and evaluation run in bf16 on GPUs: the buffers keep the columns' dtype, and the passes equal
    transformers' cache there too."""
    import copy

    half = copy.deepcopy(lm).to(torch.bfloat16)
    x = torch.randn(B, P + 24, lm.config.hidden_size, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    with torch.no_grad():
        cache = new_cache(half)
        ours = _passes(half, cache, x, ((8, _shrink),))
        theirs = _passes(half, DynamicCache(config=half.config), x, ((8, _shrink),))
    assert cache.layers[0].keys.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)
