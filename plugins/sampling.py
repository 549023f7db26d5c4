"""Samplers: the next token from the last position's logits [B, V], with a seeded generator.

`top-k` and `top-p` are one filter chain (temperature, then the k largest, then the smallest set
of tokens holding probability mass p, as transformers orders them), registered with different
parameters; temperature 0 is greedy.
"""

from __future__ import annotations

import attrs
import torch

from gptkit import hookimpl


def greedy(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return logits.argmax(dim=-1)


def _top_p_range(instance, attribute, value):
    """in (0, 1]"""
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {value}")


def _temperature(default: float):
    return attrs.field(default=default, validator=attrs.validators.ge(0.0))


def _top_k(default: int | None):
    return attrs.field(default=default, validator=attrs.validators.optional(attrs.validators.ge(1)))


@attrs.define
class TopKParams:
    top_k: int | None = _top_k(None)
    temperature: float = _temperature(1.0)


@attrs.define
class TopPParams:
    top_p: float = attrs.field(default=0.9, validator=_top_p_range)
    temperature: float = _temperature(1.0)
    top_k: int | None = _top_k(None)


class FilteredSampler:
    """Divide by the temperature, keep the k largest logits and/or the nucleus of mass p, sample."""

    def __init__(self, top_k: int | None = None, temperature: float = 1.0, top_p: float | None = None):
        self.top_k = top_k
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.temperature == 0.0:
            return greedy(logits)
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            logits = nucleus(logits, self.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def nucleus(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Logits outside the smallest set of most likely tokens whose probability reaches `p` set to -inf
    (the most likely token always stays)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@hookimpl
def register_components(registry):
    registry.sampler.register("greedy", lambda ctx: greedy, doc="The most likely token.")
    registry.sampler.register(
        "top-k",
        lambda ctx, top_k, temperature: FilteredSampler(top_k=top_k, temperature=temperature),
        params=TopKParams,
        doc="Temperature sampling among the k most likely tokens (temperature 0: greedy), as the original scripts.",
    )
    registry.sampler.register(
        "top-p",
        lambda ctx, top_p, temperature, top_k: FilteredSampler(top_k=top_k, temperature=temperature, top_p=top_p),
        params=TopPParams,
        doc="Nucleus sampling: temperature, then the smallest set of tokens holding probability top_p (optionally top_k too).",
    )
