"""What datasets share: cutting a dataset into its train / val / test parts, the longest example a
model takes, and instruction records turned into Examples in the run's prompt format."""

from __future__ import annotations

import sys
from typing import Any, Sequence

import attrs
from tqdm import tqdm

from gptkit.errors import GptkitError
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


def checked_max_length(ctx, max_length: int | None) -> int:
    """A dataset's `max_length` in tokens: None means the model's context length, which it may not exceed."""
    if max_length is None:
        if ctx.model_config is None:
            raise GptkitError("data.dataset.max_length: required when no model is built yet")
        return ctx.model_config.context_length
    if ctx.model_config is not None and max_length > ctx.model_config.context_length:
        raise GptkitError(f"data.dataset.max_length = {max_length} exceeds the model's context length {ctx.model_config.context_length}")
    return max_length


too_long_choice = attrs.validators.in_(("truncate", "drop"))
optional_length = attrs.validators.optional(attrs.validators.ge(1))


def report(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def examples_from_records(records: list[dict[str, Any]], ctx, source: str, max_length: int | None, on_too_long: str) -> list[Example]:
    """Examples in the run's prompt format (see the module doc), cut to or dropping beyond `max_length`
    tokens (None: the model's context length). Shared by every instruction dataset."""
    if ctx.tokenizer is None:
        raise GptkitError("data.dataset: instruction data needs a tokenizer ([data] tokenizer)")
    if ctx.prompt is None:
        raise GptkitError("data.dataset: instruction data needs a prompt format: set [data] prompt, e.g. { name = \"alpaca\" }")
    max_length = checked_max_length(ctx, max_length)
    examples, too_long = [], 0
    for record in records:
        prompt, response = ctx.prompt(record)
        ids = ctx.tokenizer.encode(prompt + response)
        prompt_length = len(ctx.tokenizer.encode(prompt))
        if len(ids) > max_length:
            too_long += 1
            if on_too_long == "drop":
                continue
            ids, prompt_length = ids[:max_length], min(prompt_length, max_length)
        examples.append(Example(ids, prompt_length, record))
    if too_long:
        if not examples:
            raise GptkitError(
                f"{source}: all {too_long} records are longer than max_length = {max_length} tokens; "
                "raise data.dataset.max_length (up to the context length), or use a shorter prompt format"
            )
        done = "dropped" if on_too_long == "drop" else "cut to that length"
        report(f"{source}: {too_long} of {len(records)} records are longer than max_length = {max_length} tokens: {done}")
    return examples
