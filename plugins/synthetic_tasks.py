"""Dataset `synthetic-tasks`: instructions whose answers a program can check, generated from a seed.

Four families, each record carrying its `family` (so `exact-match` can score them apart with
`group_by = "family"`): reverse a word, uppercase a word, sort the letters of a word, add two
numbers below 100. Words are random lowercase letter strings, so records stay short enough for a
byte-level model with a context of 64-128 tokens.

Records take the families in turn (record i is of families[i % len(families)]), so every
contiguous part that `split_dataset` cuts holds each family. No input appears twice in the whole
dataset, so held-out inputs are never seen in training. Generation uses `random.Random(seed)` and no
set or dict order, so the records are the same across runs, platforms and Python hash seeds.
Examples are built as in `alpaca-json`, in `[data] prompt`'s format.
"""

from __future__ import annotations

import random
import string
from typing import Any, Callable, Literal

import attrs

from gptkit import hookimpl
from gptkit.errors import GptkitError
from gptkit.data import examples_from_records, optional_length, too_long_choice
from gptkit.interfaces import Example


@attrs.frozen
class Family:
    instruction: str
    pool: str  # where inputs are drawn from ("word" or "sum"); families sharing a pool share its inputs
    answer: Callable[[str], str]


FAMILIES = {
    "reverse": Family("Reverse the word.", "word", lambda word: word[::-1]),
    "uppercase": Family("Uppercase the word.", "word", str.upper),
    "sort": Family("Sort the letters.", "word", lambda word: "".join(sorted(word))),
    "add": Family("Add the numbers.", "sum", lambda text: str(sum(int(n) for n in text.split("+")))),
}


def pools(word_length: tuple[int, int]) -> dict[str, tuple[Callable[[random.Random], str], int]]:
    """Each pool's (draw one input, how many distinct inputs there are)."""
    low, high = word_length
    return {
        "word": (
            lambda rng: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(low, high))),
            sum(26**n for n in range(low, high + 1)),
        ),
        "sum": (lambda rng: f"{rng.randrange(100)}+{rng.randrange(100)}", 100 * 100),
    }


def task_records(seed: int, count: int, families: list[str], word_length: tuple[int, int]) -> list[dict[str, Any]]:
    """`count` records {instruction, input, output, family}, each input drawn anew until unseen."""
    draws = pools(word_length)
    for pool, (_, size) in draws.items():
        needed = sum(FAMILIES[families[i % len(families)]].pool == pool for i in range(count))
        if needed > size:
            raise GptkitError(
                f"data.dataset: {needed} distinct {pool} inputs are needed but only {size} exist "
                f"(word_length = {list(word_length)}); lower count, or widen word_length"
            )
    rng, seen, records = random.Random(seed), set(), []
    for i in range(count):
        name = families[i % len(families)]
        family = FAMILIES[name]
        draw, _ = draws[family.pool]
        while (text := draw(rng)) in seen:
            pass
        seen.add(text)
        records.append({"instruction": family.instruction, "input": text, "output": family.answer(text), "family": name})
    return records


def _families(instance: Any, attribute: attrs.Attribute, value: list[str]) -> None:
    """distinct task family names"""
    unknown = [name for name in value if name not in FAMILIES]
    if not value or unknown or len(set(value)) != len(value):
        raise ValueError(f"'families' must be a list of distinct names from {', '.join(FAMILIES)}, got {value}")


def _word_length(instance: Any, attribute: attrs.Attribute, value: list[int]) -> None:
    """1 <= shortest <= longest"""
    if len(value) != 2 or not 1 <= value[0] <= value[1]:
        raise ValueError(f"'word_length' must be [shortest, longest] with 1 <= shortest <= longest, got {value}")


@attrs.define
class SyntheticTasksParams:
    seed: int = 123
    count: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    families: list[str] = attrs.field(factory=lambda: list(FAMILIES), validator=_families)
    word_length: list[int] = attrs.field(factory=lambda: [3, 7], validator=_word_length)  # [shortest, longest] letters
    on_too_long: Literal["truncate", "drop"] = attrs.field(default="truncate", validator=too_long_choice)
    max_length: int | None = attrs.field(default=None, validator=optional_length)  # None: the context length


def synthetic_tasks_dataset(ctx, seed, count, families, word_length, on_too_long, max_length) -> list[Example]:
    records = task_records(seed, count, families, tuple(word_length))
    return examples_from_records(records, ctx, "synthetic-tasks", max_length, on_too_long)


@hookimpl
def register_components(registry):
    doc = "Checkable instructions from a seed: reverse, uppercase, sort letters, add numbers; unique inputs."
    registry.dataset.register("synthetic-tasks", synthetic_tasks_dataset, params=SyntheticTasksParams, doc=doc)
