"""Collators: a list of Examples -> Batch (inputs, targets [B, T]; targets hold ignore_index where no loss is taken)."""

from __future__ import annotations

import attrs
import torch

from gptkit import hookimpl
from gptkit.interfaces import IGNORE_INDEX, Batch, Example


@attrs.define
class LMParams:
    pad_id: int | None = None  # None: the tokenizer's end-of-text id
    ignore_index: int = IGNORE_INDEX
    allowed_max_length: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(2)))


class LanguageModelCollator:
    """Next-token targets over every position: inputs are ids[:-1], targets ids[1:]; padding is ignored."""

    def __init__(self, pad_id: int, ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None):
        self.pad_id = pad_id
        self.ignore_index = ignore_index
        self.allowed_max_length = allowed_max_length

    def __call__(self, examples: list[Example]) -> Batch:
        seqs = [ex.input_ids[: self.allowed_max_length] if self.allowed_max_length else ex.input_ids for ex in examples]
        width = max(len(s) for s in seqs) - 1
        inputs = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        targets = torch.full((len(seqs), width), self.ignore_index, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids = torch.tensor(seq, dtype=torch.long)
            inputs[row, : len(seq) - 1] = ids[:-1]
            targets[row, : len(seq) - 1] = ids[1:]
        return Batch(inputs, targets, self.ignore_index)


def _pad_id(ctx, pad_id: int | None) -> int:
    if pad_id is not None:
        return pad_id
    if ctx.tokenizer is None:
        raise ValueError("collator needs pad_id or a tokenizer in the context")
    return ctx.tokenizer.eos_id


@hookimpl
def register_components(registry):
    registry.collator.register(
        "lm",
        lambda ctx, pad_id, ignore_index, allowed_max_length: LanguageModelCollator(
            _pad_id(ctx, pad_id), ignore_index, allowed_max_length
        ),
        params=LMParams,
        doc="Plain next-token prediction over every token; padding ignored.",
    )
