"""Cutting a dataset into its train / val / test parts."""

from __future__ import annotations

from typing import Any, Sequence

from gptkit.interfaces import Example

PARTS = ("train", "val", "test")


def split_dataset(dataset: Any, fractions: Sequence[float], order: Sequence[str] | None = None) -> dict[str, Sequence[Example]]:
    """{"train", "val"[, "test"]: part}. `fractions` are the parts' shares in PARTS order; `order`
    (default PARTS order) is the order in which they are cut from the dataset, one after the other.

    A dataset with its own `split(shares, order)` (text cuts its token stream) does the cutting;
    any other is taken as a sequence of examples, cut as the original ch07 script cuts its records:
    each part but the last gets int(share * n) examples, the last one the rest. So 1,100 records
    with shares (0.85, 0.05, 0.10) and order (train, test, val) give train 0-934, test 935-1044 and
    val 1045-1099."""
    shares = dict(zip(PARTS, fractions))
    order = list(order or shares)
    if hasattr(dataset, "split"):
        return dataset.split(shares, order)
    examples = dataset if isinstance(dataset, Sequence) else list(dataset)
    parts, begin = {}, 0
    for i, name in enumerate(order):
        end = len(examples) if i == len(order) - 1 else begin + int(shares[name] * len(examples))
        parts[name] = examples[begin:end]
        begin = end
    return parts
