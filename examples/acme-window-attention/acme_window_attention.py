"""Sliding-window causal attention: each token attends to at most the last `window` tokens, itself
included. A gptkit plugin, registered as attention `acme.window`.

It keeps GPT-2's parameter layout (`qkv`, `proj`, as gptkit's built-in `causal`), so GPT-2 weights
load into it, and with a window at least as long as the context it computes what `causal` does.
"""

import attrs
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from gptkit import hookimpl


@attrs.define
class WindowParams:
    """`model.attention.window` in an experiment; gptkit validates it before building the model."""

    window: int = attrs.field(default=64, validator=attrs.validators.ge(1))


def window_mask(t_query, t_key, window, padding_mask, device):
    """True where a query may look: [t_query, t_key], or [B, 1, t_query, t_key] with a padding_mask.
    Queries are the last t_query of t_key tokens (a KV cache holds the earlier ones); each sees
    itself and the `window - 1` tokens before it, but no left padding (`padding_mask` [B, t_key],
    True on real tokens). A padding query still sees itself, so no row is all-masked (NaN)."""
    q_pos = torch.arange(t_key - t_query, t_key, device=device)[:, None]
    k_pos = torch.arange(t_key, device=device)
    mask = (k_pos <= q_pos) & (k_pos > q_pos - window)
    if padding_mask is not None:
        mask = (mask & padding_mask[:, None, None, :]) | (k_pos == q_pos)
    return mask


class WindowAttention(nn.Module):
    supports_kv_cache = True  # forward honours kv_cache, so generation decodes one token a step

    def __init__(self, config, window):
        """`config` is the model's GPTConfig (emb_dim, n_heads, qkv_bias, drop_rate, ...);
        `window` comes from WindowParams."""
        super().__init__()
        self.n_heads, self.window, self.drop_rate = config.n_heads, window, config.drop_rate
        self.qkv = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.proj = nn.Linear(config.emb_dim, config.emb_dim)

    def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
        """x [B, T, C] -> [B, T, C]. `positions` goes unused: GPT-2 adds position embeddings before
        the blocks, and as padding is only on the left, the last `window` columns up to a token hold
        the same real tokens with or without it."""
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.n_heads)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # the keys and values of every token so far
        mask = window_mask(q.shape[2], k.shape[2], self.window, padding_mask, x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.drop_rate if self.training else 0.0)
        return self.proj(rearrange(y, "b h t d -> b t (h d)"))


@hookimpl
def register_components(registry):
    registry.attention.register(
        "acme.window", WindowAttention, params=WindowParams, doc="Causal attention over the last `window` tokens."
    )
