"""The model's schema, `GPTConfig`: sizes, regularisation and the components of a block. It is both
what a GPT is built from (gptkit.model) and an experiment's `[model]` table (gptkit.config), and it
imports no torch, so that experiments load and check quickly.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from gptkit.errors import GptkitError
from gptkit.presets import ALIASES, PRESETS, SIZE_KEYS, resolve_preset
from gptkit.schema import Component, at_least, fraction_below_one, kind, to_raw, unset

FROM_PRESET = "from model.preset or init.checkpoint"


def size() -> Any:
    return unset(FROM_PRESET, validator=at_least(1))


@attrs.frozen
class GPTConfig:
    """Everything needed to build a GPT: sizes, regularisation and the components of a block.

    It is also an experiment's `[model]` table, where the sizes may be left unset: `resolved()` takes
    them from `preset` or from the checkpoint `[init]` loads. A GPT holds its resolved config."""

    preset: str | None = unset("no preset: sizes from the keys below, or from init.checkpoint", validator=lambda _, __, name: known_preset(name))
    vocab_size: int | None = size()
    context_length: int | None = size()
    emb_dim: int | None = size()
    n_heads: int | None = size()
    n_layers: int | None = size()
    drop_rate: float = attrs.field(default=0.0, validator=fraction_below_one())
    qkv_bias: bool | None = unset("from init.checkpoint, else false")
    tie_weights: bool | None = unset("from init.checkpoint, else true")
    init: Literal["gpt2", "torch-default"] = "gpt2"  # random init: GPT-2's N(0, 0.02), or PyTorch's layer defaults (see GPT.reset_parameters)
    # Pad the embedding and head rows to a multiple of this (64, 128: faster GPU matmuls); logits and saved weights keep vocab_size.
    vocab_multiple: int = attrs.field(default=1, validator=at_least(1))
    attention: Component = kind("attention", factory=lambda: Component("causal"))
    norm: Component = kind("norm", factory=lambda: Component("layernorm"))
    feedforward: Component = kind("feedforward", factory=lambda: Component("gelu-mlp"))

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        return cls(**{**PRESETS[known_preset(name)], **overrides})

    def resolved(self, base: "GPTConfig | None" = None) -> "GPTConfig":
        """This config with every size set: those given here over the preset's; with `base` (the
        config of the checkpoint that `[init]` loads) the checkpoint's, which sizes, `qkv_bias` and
        `tie_weights` given here must agree with. Unset biases and tying come from `base`, else
        false and true. Raises GptkitError naming every size missing or at odds."""
        sizes = dict(PRESETS[resolve_preset(self.preset)]) if self.preset else {}
        sizes.update({k: getattr(self, k) for k in SIZE_KEYS if getattr(self, k) is not None})
        flags = {"qkv_bias": self.qkv_bias, "tie_weights": self.tie_weights}
        if base is not None:
            clashes = [f"model.{k} = {v} but the checkpoint has {getattr(base, k)}" for k, v in sizes.items() if v != getattr(base, k)]
            clashes += [
                f"model.{k} = {str(v).lower()} but the checkpoint has {str(getattr(base, k)).lower()}"
                for k, v in flags.items()
                if v is not None and v != getattr(base, k)
            ]
            if clashes:
                raise GptkitError("; ".join(clashes))
            sizes = {k: getattr(base, k) for k in SIZE_KEYS}
            flags = {k: getattr(base, k) for k in flags}
        problems = size_problems(sizes)
        if problems:
            raise GptkitError("; ".join(f"model.{key}: {message}" for key, message in problems))
        qkv_bias = flags["qkv_bias"] if flags["qkv_bias"] is not None else False
        tie_weights = flags["tie_weights"] if flags["tie_weights"] is not None else True
        return attrs.evolve(self, **sizes, qkv_bias=qkv_bias, tie_weights=tie_weights)

    def to_dict(self) -> dict[str, Any]:
        """What a saved model records: not `vocab_multiple`, a layout in memory that leaves the model
        as it is, nor `preset`, which its sizes already say."""
        data = to_raw(self)
        data.pop("vocab_multiple", None)
        data.pop("preset", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        data = dict(data)
        for key in ("attention", "norm", "feedforward"):
            if key in data:
                spec = dict(data[key])
                data[key] = Component(spec.pop("name"), spec)
        return cls(**data)


def known_preset(name: str | None) -> str | None:
    """The canonical name of preset `name` (None for None); ValueError for an unknown one."""
    if name is not None and resolve_preset(name) is None:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (aliases: {', '.join(ALIASES)})")
    return resolve_preset(name) if name is not None else None


def size_problems(sizes: dict[str, int | None]) -> list[tuple[str, str]]:
    """(size key, what is wrong) for each size missing from `sizes`, and for heads that do not divide
    the width."""
    problems = [(k, "required (or set model.preset, or init.checkpoint)") for k in SIZE_KEYS if sizes.get(k) is None]
    emb, heads = sizes.get("emb_dim"), sizes.get("n_heads")
    if emb and heads and emb % heads:
        problems.append(("emb_dim", f"{emb} is not divisible by model.n_heads = {heads}"))
    return problems
