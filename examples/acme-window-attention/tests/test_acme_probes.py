"""The wrapping components compute what the components they wrap compute, and record what they saw."""

import attrs
import torch

from gptkit.config import Component
from gptkit.model import GPT, GPTConfig
from gptkit.plugins import registry
from gptkit.testing import check_attention, check_norm

CONFIG = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)


def test_conformance():
    check_attention("acme.probed")
    check_attention("acme.probed", inner="causal-reference")
    check_norm("acme.probed-norm")


def test_a_probed_model_is_the_plain_model_and_records_its_activations():
    torch.manual_seed(0)
    plain = GPT(CONFIG).eval()
    probed = GPT(attrs.evolve(CONFIG, attention=Component("acme.probed"), norm=Component("acme.probed-norm"))).eval()
    probed.load_state_dict(plain.state_dict())  # strict: the wrapped modules keep their parameter names
    ids = torch.randint(CONFIG.vocab_size, (2, 16))
    torch.testing.assert_close(probed(ids), plain(ids), atol=0, rtol=0)
    assert all(block.attn.last_rms > 0 and block.norm1.last_rms > 0 for block in probed.blocks)


def test_banned_tokens_are_never_sampled_and_no_ban_is_top_k():
    logits = torch.randn(4, CONFIG.vocab_size)
    top_k = registry.sampler.build(Component("top-k", {"top_k": 5}), None)
    same = registry.sampler.build(Component("acme.banned", {"top_k": 5}), None)
    assert torch.equal(same(logits, torch.Generator().manual_seed(1)), top_k(logits, torch.Generator().manual_seed(1)))
    favourite = logits.argmax(-1).tolist()
    banned = registry.sampler.build(Component("acme.banned", {"top_k": 1, "banned": favourite}), None)
    assert not set(banned(logits).tolist()) & set(favourite)
