"""A tiny random GPT over the byte tokenizer, with weights large enough that its logits are far
apart (GPT-2's 0.02 init gives near-ties, where float rounding could flip a greedy choice)."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import Component
from gptkit.interfaces import Context
from gptkit.model import GPT, GPTConfig
from gptkit.plugins import registry


def tiny_gpt(attention: str = "causal", seed: int = 0, context_length: int = 128, **sizes) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        **{**dict(vocab_size=257, context_length=context_length, emb_dim=32, n_heads=4, n_layers=2), **sizes},
        qkv_bias=True,
        attention=Component(attention),
    )
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith(("norm1.weight", "norm2.weight")) else 0.0, 0.3)
        model.pos_emb.weight.normal_(0.0, 1.0)  # position matters: greedy output does not just repeat
    return model.eval()


def byte_tokenizer():
    return registry.tokenizer.build(Component("bytes"), Context())


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine waiting for one makes
    each step up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
