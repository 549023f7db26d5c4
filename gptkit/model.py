"""The GPT-2 architecture, assembled from plugins.

    token ids -> token embedding + position embedding -> dropout
              -> N x Block: x + drop(attention(norm1(x))), then x + drop(feedforward(norm2(x)))
              -> final norm -> output head (optionally tied to the token embedding) -> logits

Which attention, norm and feedforward a block uses is named in `GPTConfig` and looked up in the
registries, so a plugin can replace any of them. The canonical parameter names (what checkpoint
loaders map into) are those of this file and of the built-in components:

    tok_emb.weight, pos_emb.weight,
    blocks.{i}.norm1.{weight,bias}, blocks.{i}.attn.qkv.{weight,bias}, blocks.{i}.attn.proj.{weight,bias},
    blocks.{i}.norm2.{weight,bias}, blocks.{i}.ff.fc.{weight,bias}, blocks.{i}.ff.proj.{weight,bias},
    final_norm.{weight,bias}, head.weight (absent from saved files when tied)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gptkit.model_config import GPTConfig
from gptkit.plugins import registry

class Block(nn.Module):
    """One pre-norm transformer block: attention then feedforward, each added to the residual stream."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = registry.norm.build(config.norm, config)
        self.attn = registry.attention.build(config.attention, config)
        self.norm2 = registry.norm.build(config.norm, config)
        self.ff = registry.feedforward.build(config.feedforward, config)
        self.drop = nn.Dropout(config.drop_rate)

    def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
        x = x + self.drop(self.attn(self.norm1(x), positions=positions, kv_cache=kv_cache, padding_mask=padding_mask))
        return x + self.drop(self.ff(self.norm2(x)))


class GPT(nn.Module):
    """With `vocab_multiple` > 1 the token embedding and the head hold zero rows up to a multiple of
    it (50257 -> 50304 for 64: GPU matmuls run faster on such sizes). Nothing outside sees them: the
    logits are cut back to `vocab_size`, the state dict holds `vocab_size` rows and loading pads
    again, so losses, logits and saved checkpoints are those of the unpadded model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config = config.resolved()
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = registry.norm.build(config.norm, config)
        self.head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.padded_vocab_size > config.vocab_size:
            # after every layer drew its initial values, so they are those of the unpadded model
            self.tok_emb.weight = pad_rows(self.tok_emb.weight, config.padded_vocab_size)
            self.head.weight = pad_rows(self.head.weight, config.padded_vocab_size)
            self.register_state_dict_post_hook(_unpad_vocab_rows)
            self.register_load_state_dict_pre_hook(_pad_vocab_rows)
        if config.tie_weights:
            self.head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), zero biases, residual projections (`*.proj`) scaled by 1/sqrt(2N).

        `init = "torch-default"` keeps what PyTorch's layers start with (nn.Embedding N(0, 1), nn.Linear
        uniform in ±1/sqrt(fan_in)), as the original scripts do: their loss curves assume it.
        """
        if self.config.init == "torch-default":
            return
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        vocab = self.config.vocab_size
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(".proj") else 0.02
                rows = vocab if module is self.tok_emb or module is self.head else None  # padding stays zero
                nn.init.normal_(module.weight[:rows], mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, idx, *, positions=None, kv_caches=None, padding_mask=None, last_only=False):
        """Logits [B, T, vocab] for token ids [B, T] ([B, 1, vocab] with `last_only`, all generation needs).

        `positions` [B, T] default to 0..T-1 after what `kv_caches` (one per block) already hold;
        `padding_mask` [B, T_total] is True on real tokens (needed with left padding).
        """
        _, t = idx.shape
        if positions is None:
            start = kv_caches[0].length if kv_caches is not None else 0
            if start + t > self.config.context_length:
                raise ValueError(f"sequence of {start + t} tokens exceeds the context length {self.config.context_length}")
            positions = torch.arange(start, start + t, device=idx.device).unsqueeze(0)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        for i, block in enumerate(self.blocks):
            cache = kv_caches[i] if kv_caches is not None else None
            x = block(x, positions=positions, kv_cache=cache, padding_mask=padding_mask)
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.final_norm(x))
        return logits[..., : self.config.vocab_size] if logits.shape[-1] != self.config.vocab_size else logits

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters of the unpadded model (vocabulary padding is not counted)."""
        n = sum(p.numel() for p in self.parameters())
        n -= (self.config.padded_vocab_size - self.config.vocab_size) * self.config.emb_dim * (1 if self.config.tie_weights else 2)
        return n - self.pos_emb.weight.numel() if exclude_embeddings else n


VOCAB_ROWS = ("tok_emb.weight", "head.weight")


def pad_rows(weight: torch.Tensor, rows: int) -> nn.Parameter:
    """`weight` [V, C] with zero rows appended up to `rows`."""
    return nn.Parameter(torch.cat([weight.detach(), weight.new_zeros(rows - weight.shape[0], *weight.shape[1:])]))


def _unpad_vocab_rows(model: GPT, state: dict, prefix: str, local_metadata) -> None:
    for name in VOCAB_ROWS:
        if prefix + name in state:
            state[prefix + name] = state[prefix + name][: model.config.vocab_size]


def _pad_vocab_rows(model: GPT, state: dict, prefix: str, *args) -> None:
    for name in VOCAB_ROWS:
        tensor = state.get(prefix + name)
        if tensor is not None and tensor.shape[0] == model.config.vocab_size:
            state[prefix + name] = pad_rows(tensor, model.config.padded_vocab_size).data
