"""Normalisation layers: `layernorm` (GPT-2's) and `rmsnorm`."""

from __future__ import annotations

import attrs
from torch import nn

from gptkit import hookimpl


@attrs.define
class NormParams:
    eps: float = attrs.field(default=1e-5, validator=attrs.validators.gt(0.0))


@hookimpl
def register_components(registry):
    registry.norm.register(
        "layernorm",
        lambda config, eps: nn.LayerNorm(config.emb_dim, eps=eps),
        params=NormParams,
        doc="LayerNorm with gain and bias (GPT-2; eps 1e-5).",
    )
    registry.norm.register(
        "rmsnorm",
        lambda config, eps: nn.RMSNorm(config.emb_dim, eps=eps),
        params=NormParams,
        doc="RMSNorm: scale by the root mean square, gain only, no centring.",
    )
