"""Every registered attention, norm and feedforward honours its kind's contract."""

import pytest
import torch

from gptkit.config import Component
from gptkit.generation import KVCache
from gptkit.model import GPTConfig
from gptkit.plugins import registry

CONFIG = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)


def build(kind, name, config=CONFIG):
    torch.manual_seed(0)
    module = registry[kind].build(Component(name), config)
    for p in module.parameters():  # move away from init so every parameter matters
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


def call(kind, module, x, **kwargs):
    return module(x, **kwargs) if kind == "attention" else module(x)


MODEL_COMPONENTS = [(kind, name) for kind in ("attention", "norm", "feedforward") for name in registry[kind].names()]


@pytest.mark.parametrize("kind,name", MODEL_COMPONENTS, ids=lambda v: str(v))
def test_shape_dtype_determinism(kind, name):
    module = build(kind, name)
    x = torch.randn(3, 7, CONFIG.emb_dim)
    y = call(kind, module, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, call(kind, module, x))
    y64 = call(kind, module.double(), x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind,name", MODEL_COMPONENTS, ids=lambda v: str(v))
def test_causality(kind, name):
    """Changing a later position never changes earlier outputs."""
    module = build(kind, name)
    x = torch.randn(2, 10, CONFIG.emb_dim)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, CONFIG.emb_dim)
    y, y_changed = call(kind, module, x), call(kind, module, changed)
    torch.testing.assert_close(y[:, :6], y_changed[:, :6], atol=0, rtol=0)
    assert not torch.allclose(y[:, 6:], y_changed[:, 6:])


@pytest.mark.parametrize("name", registry.attention.names())
def test_attention_takes_the_keyword_interface(name):
    module = build("attention", name)
    assert isinstance(getattr(type(module), "supports_kv_cache", None), bool)
    x = torch.randn(2, 5, CONFIG.emb_dim)
    y = module(x, positions=torch.arange(5).expand(2, 5), padding_mask=torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(y, module(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in registry.attention.names()])
def test_kv_cache_matches_full_recompute(name):
    module = build("attention", name)
    if not type(module).supports_kv_cache:
        pytest.skip(f"{name} does not support the KV cache")
    x = torch.randn(2, 9, CONFIG.emb_dim)
    full = module(x)
    cache = KVCache(max_length=16)
    pieces = [module(x[:, :5], kv_cache=cache)] + [module(x[:, t : t + 1], kv_cache=cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_padding_mask_hides_left_padding():
    """A left-padded row gives, at its real positions, what the unpadded row gives."""
    for name in registry.attention.names():
        module = build("attention", name)
        x = torch.randn(1, 4, CONFIG.emb_dim)
        padded = torch.cat([torch.randn(1, 3, CONFIG.emb_dim), x], dim=1)
        mask = torch.tensor([[False] * 3 + [True] * 4])
        out = module(padded, padding_mask=mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[:, 3:], module(x), atol=1e-5, rtol=1e-5)


def test_causal_and_reference_agree():
    torch.manual_seed(1)
    fast, reference = build("attention", "causal"), build("attention", "causal-reference")
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(4, 16, CONFIG.emb_dim)
    torch.testing.assert_close(fast(x), reference(x), atol=1e-5, rtol=0)
    mask = torch.ones(4, 16, dtype=torch.bool)
    mask[1, :5] = False
    torch.testing.assert_close(fast(x, padding_mask=mask), reference(x, padding_mask=mask), atol=1e-5, rtol=0)


def test_layernorm_matches_the_original_formulation():
    norm = build("norm", "layernorm")
    x = torch.randn(2, 3, CONFIG.emb_dim) * 5 + 2
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    expected = norm.weight * (x - mean) / torch.sqrt(var + 1e-5) + norm.bias
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
