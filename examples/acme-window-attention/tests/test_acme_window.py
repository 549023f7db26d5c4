"""acme.window passes gptkit's conformance checks, takes GPT-2's weights as `causal` does, and a
token sees exactly the last `window` tokens. Run with the package installed: `pytest`."""

import attrs
import torch

from gptkit.config import Component
from gptkit.model import GPT, GPTConfig
from gptkit.testing import CONFIG, build, check_attention


def test_conformance():
    for window in (1, 3, 64):  # the checks run 5 to 10 tokens: windows shorter and longer than that
        check_attention("acme.window", window=window)


def test_with_a_window_as_long_as_the_context_it_is_causal_attention():
    config = GPTConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)
    torch.manual_seed(0)
    causal = GPT(config).eval()
    windowed = GPT(attrs.evolve(config, attention=Component("acme.window", {"window": 16}))).eval()
    windowed.load_state_dict(causal.state_dict())  # strict: the same parameter names and shapes
    ids = torch.randint(config.vocab_size, (2, 16))
    torch.testing.assert_close(windowed(ids), causal(ids), atol=0, rtol=0)


def test_a_token_sees_the_last_window_tokens_and_no_further():
    attention = build("attention", "acme.window", window=4)
    x = torch.randn(1, 10, CONFIG.emb_dim)
    changed = x.clone()
    changed[:, 2] += 1.0  # seen by the tokens at 2, 3, 4 and 5
    y, y_changed = attention(x), attention(changed)
    assert not torch.isclose(y, y_changed).all(-1)[0, 2:6].any()
    assert torch.equal(y[:, 6:], y_changed[:, 6:]) and torch.equal(y[:, :2], y_changed[:, :2])
