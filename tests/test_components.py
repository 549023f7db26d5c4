"""Every registered attention, norm and feedforward honours its kind's contract (the checks live in
gptkit.testing, where third-party plugins run them too)."""

import pytest
import torch

from gptkit.plugins import registry
from gptkit_plugins.attention import CausalSelfAttention, sdpa_kernel
from gptkit.testing import CONFIG, build, check_attention, check_feedforward, check_norm

CHECKS = {"attention": check_attention, "norm": check_norm, "feedforward": check_feedforward}
MODEL_COMPONENTS = [(kind, name) for kind in CHECKS for name in registry[kind].names()]


@pytest.mark.parametrize("kind,name", MODEL_COMPONENTS, ids=lambda v: str(v))
def test_conformance(kind, name):
    CHECKS[kind](name)


class IgnoresPadding(CausalSelfAttention):
    supports_static_kv_cache = False

    def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
        return super().forward(x, kv_cache=kv_cache)


class StaticIgnoresPadding(IgnoresPadding):
    """Claims the static cache, yet would attend to its slots not written yet."""

    supports_static_kv_cache = True


class IgnoresCache(CausalSelfAttention):
    def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
        return super().forward(x, padding_mask=padding_mask)


@pytest.mark.parametrize(
    "broken,check",
    [(IgnoresPadding, "left_padding_is_hidden"), (IgnoresCache, "kv_cache_matches_recompute"), (StaticIgnoresPadding, "kv_cache_matches_recompute")],
)
def test_a_broken_attention_fails_naming_the_check(broken, check):
    registry.attention.register("test.broken", lambda config: broken(config, sdpa_kernel))
    try:
        with pytest.raises(AssertionError, match=f"attention 'test.broken' fails {check}: "):
            check_attention("test.broken")
    finally:
        registry.attention.unregister("test.broken")


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
