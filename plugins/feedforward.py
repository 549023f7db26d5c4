"""Position-wise feedforward: `gelu-mlp`, GPT-2's expand-GELU-project MLP."""

from __future__ import annotations

import attrs
from torch import nn

from gptkit import hookimpl


@attrs.define
class MLPParams:
    expansion: int = attrs.field(default=4, validator=attrs.validators.ge(1))


class GeluMLP(nn.Module):
    def __init__(self, config, expansion: int = 4):
        super().__init__()
        self.fc = nn.Linear(config.emb_dim, expansion * config.emb_dim)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(expansion * config.emb_dim, config.emb_dim)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


@hookimpl
def register_components(registry):
    registry.feedforward.register(
        "gelu-mlp", GeluMLP, params=MLPParams, doc="Linear (x expansion) -> tanh-approximate GELU -> Linear, as GPT-2."
    )
