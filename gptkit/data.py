"""Cutting a dataset into its train / val / test parts."""

from __future__ import annotations

from typing import Any, Sequence

from gptkit.interfaces import Example


def split_dataset(dataset: Any, fractions: Sequence[float]) -> list[Sequence[Example]]:
    """Train/val(/test) parts by ratio: the dataset's own `split(fractions)` when it has one (text
    cuts its token stream), else contiguous runs of its examples in order."""
    if hasattr(dataset, "split"):
        return list(dataset.split(fractions))
    examples = list(dataset)
    parts, begin, total = [], 0, 0.0
    for i, fraction in enumerate(fractions):
        total += fraction
        end = len(examples) if i == len(fractions) - 1 else int(round(total * len(examples)))
        parts.append(examples[begin:end])
        begin = end
    return parts
