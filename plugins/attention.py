"""Causal multi-head self-attention: `causal` (PyTorch SDPA) and `causal-reference` (explicit masked
softmax, as in the original scripts). Both share the projections and parameter names; only the
kernel softmax(QKᵀ/√d)V differs, so weights load into either."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import nn

from gptkit import hookimpl

Kernel = Callable[..., torch.Tensor]


def sdpa_kernel(q, k, v, mask, dropout_p):
    """q [b h t d], k/v [b h s d]; mask None means plain causal, queries being the last t of s keys
    (only t == s or t == 1 reach here unmasked)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=q.shape[2] > 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def reference_kernel(q, k, v, mask, dropout_p):
    """The same maths, spelled out: masked scores, softmax, dropout, weighted sum of values."""
    scores = einsum(q, k, "b h t d, b h s d -> b h t s") / math.sqrt(q.shape[-1])
    if mask is None and q.shape[2] > 1:
        mask = causal_mask(q.shape[2], k.shape[2], None, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return einsum(weights, v, "b h t s, b h s d -> b h t d")


def causal_mask(t_query: int, t_key: int, padding_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Bool [B|1, 1, t_query, t_key], True where a query may look: at or before its own position
    (queries are the last t_query of t_key positions, as when a KV cache holds the earlier ones) and
    not at padding (`padding_mask` [B, >= t_key], True on real tokens). A query always sees itself,
    so rows of padding never become all-masked (which would give NaN)."""
    q_pos = torch.arange(t_key - t_query, t_key, device=device)[:, None]
    k_pos = torch.arange(t_key, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if padding_mask is not None:
        mask = (mask & padding_mask[:, None, None, :t_key]) | (k_pos == q_pos)[None, None]
    return mask


class CausalSelfAttention(nn.Module):
    supports_kv_cache = True
    supports_static_kv_cache = True  # a one-token query's mask comes from padding_mask alone (see StaticKVCache)

    def __init__(self, config, kernel: Kernel):
        super().__init__()
        self.n_heads = config.n_heads
        self.drop_rate = config.drop_rate
        self.kernel = kernel
        self.qkv = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.emb_dim, config.emb_dim)

    def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        t_query, t_key = q.shape[2], k.shape[2]
        if padding_mask is None and t_query in (1, t_key):
            mask = None  # plain causal: let the kernel take its fastest path
        elif t_query == 1:
            mask = padding_mask[:, None, None, :t_key]  # one decoding step: a real token sees all real ones
        else:
            mask = causal_mask(t_query, t_key, padding_mask, x.device)
        y = self.kernel(q, k, v, mask, self.drop_rate if self.training else 0.0)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


@hookimpl
def register_components(registry):
    registry.attention.register(
        "causal",
        lambda config: CausalSelfAttention(config, sdpa_kernel),
        doc="Causal multi-head attention with PyTorch's scaled_dot_product_attention (flash/memory-efficient kernels).",
    )
    registry.attention.register(
        "causal-reference",
        lambda config: CausalSelfAttention(config, reference_kernel),
        doc="Causal multi-head attention as an explicit masked softmax, the original scripts' formulation.",
    )
