"""`model.init`: GPT-2's N(0, 0.02) by default, or PyTorch's layer defaults as in the original scripts."""

from __future__ import annotations

import math

import torch

from gptkit.model import GPT, GPTConfig


def test_init_schemes():
    torch.manual_seed(0)
    gpt2 = GPT(GPTConfig(vocab_size=500, context_length=16, emb_dim=64, n_heads=4, n_layers=2))
    torch.manual_seed(0)
    default = GPT(GPTConfig(vocab_size=500, context_length=16, emb_dim=64, n_heads=4, n_layers=2, init="torch-default"))
    assert abs(gpt2.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(default.tok_emb.weight.std().item() - 1.0) < 0.05  # nn.Embedding: N(0, 1)
    bound = 1 / math.sqrt(64)  # nn.Linear: uniform in ±1/sqrt(fan_in)
    qkv = default.blocks[0].attn.qkv.weight
    assert qkv.abs().max().item() <= bound and qkv.std().item() > 0.9 * bound / math.sqrt(3)
    assert GPTConfig.from_dict(default.config.to_dict()).init == "torch-default"
