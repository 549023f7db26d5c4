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
from typing import Any

import attrs
import torch
from torch import nn

from gptkit.config import Component, ModelSection
from gptkit.errors import GptkitError
from gptkit.registry import registry

PRESETS: dict[str, dict[str, int]] = {
    "gpt2-124M": dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12),
    "gpt2-355M": dict(vocab_size=50257, context_length=1024, emb_dim=1024, n_heads=16, n_layers=24),
    "gpt2-774M": dict(vocab_size=50257, context_length=1024, emb_dim=1280, n_heads=20, n_layers=36),
    "gpt2-1558M": dict(vocab_size=50257, context_length=1024, emb_dim=1600, n_heads=25, n_layers=48),
}
ALIASES = {"gpt2": "gpt2-124M", "gpt2-medium": "gpt2-355M", "gpt2-large": "gpt2-774M", "gpt2-xl": "gpt2-1558M"}
SIZE_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")


def resolve_preset(name: str) -> str | None:
    """The canonical preset name for a preset or alias, or None."""
    name = ALIASES.get(name, name)
    return name if name in PRESETS else None


@attrs.frozen
class GPTConfig:
    """Everything needed to build a GPT: sizes, regularisation and the components of a block."""

    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float = 0.0
    qkv_bias: bool = False
    tie_weights: bool = True
    init: str = "gpt2"  # gpt2 | torch-default (see GPT.reset_parameters)
    attention: Component = attrs.field(factory=lambda: Component("causal"))
    norm: Component = attrs.field(factory=lambda: Component("layernorm"))
    feedforward: Component = attrs.field(factory=lambda: Component("gelu-mlp"))

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        canonical = resolve_preset(name)
        if canonical is None:
            raise GptkitError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (aliases: {', '.join(ALIASES)})")
        return cls(**{**PRESETS[canonical], **overrides})

    @classmethod
    def from_section(cls, section: ModelSection, base: "GPTConfig | None" = None) -> "GPTConfig":
        """The model of a `[model]` section; `base` (from a checkpoint) fixes sizes explicit keys must agree with."""
        sizes = dict(PRESETS[resolve_preset(section.preset)]) if section.preset else {}
        explicit = {k: getattr(section, k) for k in SIZE_KEYS if getattr(section, k) is not None}
        if base is not None:
            checkpoint_sizes = {k: getattr(base, k) for k in SIZE_KEYS}
            clashes = [
                f"model.{k} = {v} but the checkpoint has {checkpoint_sizes[k]}"
                for k, v in {**sizes, **explicit}.items()
                if v != checkpoint_sizes[k]
            ]
            for key in ("qkv_bias", "tie_weights"):
                value = getattr(section, key)
                if value is not None and value != getattr(base, key):
                    clashes.append(f"model.{key} = {str(value).lower()} but the checkpoint has {str(getattr(base, key)).lower()}")
            if clashes:
                raise GptkitError("; ".join(clashes))
            sizes = checkpoint_sizes
        sizes.update(explicit)
        return cls(
            **sizes,
            drop_rate=section.drop_rate,
            qkv_bias=section.qkv_bias if section.qkv_bias is not None else (base.qkv_bias if base else False),
            tie_weights=section.tie_weights if section.tie_weights is not None else (base.tie_weights if base else True),
            init=section.init,
            attention=section.attention,
            norm=section.norm,
            feedforward=section.feedforward,
        )

    def to_dict(self) -> dict[str, Any]:
        from gptkit.config import to_raw

        return to_raw(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        data = dict(data)
        for key in ("attention", "norm", "feedforward"):
            if key in data:
                spec = dict(data[key])
                data[key] = Component(spec.pop("name"), spec)
        return cls(**data)


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
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop = nn.Dropout(config.drop_rate)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = registry.norm.build(config.norm, config)
        self.head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
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
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if name.endswith(".proj") else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
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
        return self.head(self.final_norm(x))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if exclude_embeddings else n
