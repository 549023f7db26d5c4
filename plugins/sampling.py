"""Samplers: the next token from the last position's logits [B, V], with a seeded generator."""

from __future__ import annotations

import attrs
import torch

from gptkit import hookimpl


def greedy(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return logits.argmax(dim=-1)


@attrs.define
class TopKParams:
    top_k: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.ge(0.0))


class TopK:
    """Keep the k largest logits, divide by the temperature, sample; temperature 0 is greedy."""

    def __init__(self, top_k: int | None = None, temperature: float = 1.0):
        self.top_k = top_k
        self.temperature = temperature

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.temperature == 0.0:
            return greedy(logits)
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@hookimpl
def register_components(registry):
    registry.sampler.register("greedy", lambda ctx: greedy, doc="The most likely token.")
    registry.sampler.register(
        "top-k",
        lambda ctx, top_k, temperature: TopK(top_k, temperature),
        params=TopKParams,
        doc="Temperature sampling among the k most likely tokens (temperature 0: greedy), as the original scripts.",
    )
