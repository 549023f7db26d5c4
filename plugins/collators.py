"""Collators: a list of Examples -> Batch (inputs, targets [B, T]; targets hold ignore_index where no loss is taken).

`lm` is plain next-token prediction over text windows. `masked-response` is the original ch07
script's `custom_collate_fn` for instruction data: each example gets an end-of-text token, so the
model learns to stop, and may have its prompt hidden from the loss (`mask_prompt`).
"""

from __future__ import annotations

import attrs
import torch

from gptkit import hookimpl
from gptkit.interfaces import IGNORE_INDEX, Batch, Example


def shifted(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, padding): `seqs` padded with `pad_id` to the longest; inputs are each row
    but its last token, targets each row but its first, and `padding` is True on the targets past
    each sequence's last token."""
    padded = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    inputs, targets = padded[:, :-1].clone(), padded[:, 1:].clone()
    return inputs, targets, positions(targets) >= torch.tensor([[len(s) - 1] for s in seqs])


def positions(batch: torch.Tensor) -> torch.Tensor:
    """Each column's index, [1, T]."""
    return torch.arange(batch.shape[1]).unsqueeze(0)


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
        inputs, targets, padding = shifted(seqs, self.pad_id)
        inputs[padding], targets[padding] = self.pad_id, self.ignore_index
        return Batch(inputs, targets, self.ignore_index)


@attrs.define
class MaskedResponseParams(LMParams):
    mask_prompt: bool = False  # also take no loss on the targets that predict prompt tokens


class MaskedResponseCollator:
    """The original's instruction collator, tensor for tensor when `mask_prompt` is off.

    Each example gets one end-of-text token and is padded with `pad_id` to the batch's longest;
    inputs are padded[:-1], targets padded[1:]. The end-of-text target is kept (the model learns
    to stop) and the padding after it ignored. Then inputs and targets are cut to
    `allowed_max_length`, and with `mask_prompt` the targets before the response
    (positions < prompt_length - 1) are ignored too.

    When `pad_id` is the end-of-text id, padding is found as the original finds it, by value: every
    target equal to it but the first is ignored. So an end-of-text inside an example's text hides the
    end-of-text appended after it; this quirk is kept so that training matches the original's.
    """

    def __init__(self, pad_id: int, eos_id: int, ignore_index: int = IGNORE_INDEX, allowed_max_length: int | None = None, mask_prompt: bool = False):
        self.pad_id, self.eos_id, self.ignore_index = pad_id, eos_id, ignore_index
        self.allowed_max_length, self.mask_prompt = allowed_max_length, mask_prompt

    def __call__(self, examples: list[Example]) -> Batch:
        inputs, targets, padding = shifted([ex.input_ids + [self.eos_id] for ex in examples], self.pad_id)
        if self.pad_id == self.eos_id:
            is_pad = targets == self.pad_id
            padding = is_pad & (is_pad.cumsum(dim=1) > 1)
        targets[padding] = self.ignore_index
        inputs, targets = inputs[:, : self.allowed_max_length], targets[:, : self.allowed_max_length]
        if self.mask_prompt:
            prompt_lengths = torch.tensor([ex.prompt_length for ex in examples])
            targets[positions(targets) < (prompt_lengths - 1).unsqueeze(1)] = self.ignore_index
        return Batch(inputs, targets, self.ignore_index)


def _pad_id(ctx, pad_id: int | None) -> int:
    if pad_id is not None:
        return pad_id
    return _eos_id(ctx, "pad_id or a tokenizer")


def _eos_id(ctx, needs: str = "a tokenizer (for its end-of-text id)") -> int:
    if ctx.tokenizer is None:
        raise ValueError(f"collator needs {needs} in the context")
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
    registry.collator.register(
        "masked-response",
        lambda ctx, pad_id, ignore_index, allowed_max_length, mask_prompt: MaskedResponseCollator(
            _pad_id(ctx, pad_id), _eos_id(ctx), ignore_index, allowed_max_length, mask_prompt
        ),
        params=MaskedResponseParams,
        doc="Instruction data as the original: end-of-text appended, padding after it ignored; optionally the prompt too.",
    )
