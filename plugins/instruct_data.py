"""Dataset `alpaca-json`: instruction records from a JSON array file, a JSON Lines file, or a URL.

A record is an object with string fields `instruction`, `input` and `output`; `input` may be empty
or left out (then it is ""), and other fields are kept (the instruct recipe writes them back into
responses.json). Each record becomes an `Example` as in the original ch07 script: the prompt format
(`[data] prompt`, required: chat and responses must use the format the model was trained with, so
there is no silent default) gives prompt and response, and the token ids are those of
prompt + response encoded as one string. `prompt_length` is the length of the prompt encoded alone,
which is what `masked-response` with `mask_prompt` hides from the loss.

The dataset is a plain list: `gptkit.data.split_dataset` cuts it as the original cuts its records.
Records longer than `max_length` tokens are cut to it or dropped (`on_too_long`), and bad records
are an error or skipped (`on_bad_record`); both are counted and reported on one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import attrs

from gptkit import hookimpl
from gptkit.download import cache_dir as default_cache_dir
from gptkit.download import download_once, is_url
from gptkit.errors import GptkitError
from gptkit.files import read_text
from gptkit.json_errors import json_reason, malformed_json
from gptkit.interfaces import Example
from gptkit.schema import path_field
from gptkit.data import examples_from_records, optional_length, report, too_long_choice

FIELDS = ("instruction", "input", "output")
FORMATS = "a JSON array of records, or JSON Lines (one record per line)"


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def record_problem(value: Any) -> str | None:
    """Why a parsed JSON value is not an instruction record, or None when it is one."""
    if isinstance(value, json.JSONDecodeError):
        return f"malformed JSON at column {value.colno}: {json_reason(value)} (expected {FORMATS})"
    if not isinstance(value, dict):
        return f"expected an object with fields {', '.join(FIELDS)}, got {json_type(value)}"
    for field in FIELDS:
        if field not in value and field != "input":  # a missing input is ""
            return f"missing field {field!r}"
        if field in value and not isinstance(value[field], str):
            return f"field {field!r} must be a string, got {json_type(value[field])}"
    return None


def parse_records(text: str, source: str) -> list[tuple[str, Any]]:
    """(where, value) for each record of a JSON array or JSON Lines text; `where` is the record's
    index (and line, for JSON Lines). A malformed JSON Lines line is kept as its decoding
    error, so that it can be skipped like any bad record; a malformed array is an error."""
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GptkitError(malformed_json(source, exc)) from None
        return [(f"record {i}", value) for i, value in enumerate(values)]
    entries = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                value = exc
            entries.append((f"record {len(entries)} (line {number})", value))
    return entries


def valid_records(entries: list[tuple[str, Any]], source: str, on_bad_record: str) -> list[dict[str, Any]]:
    """The records of `entries` that are instruction records; a bad one is an error, or skipped and counted."""
    if not entries:
        raise GptkitError(f"{source}: holds no records (expected {FORMATS})")
    records, skipped = [], []
    for where, value in entries:
        problem = record_problem(value)
        if problem is None:
            records.append(value)
        elif on_bad_record == "error":
            raise GptkitError(f"{source}: {where}: {problem}; fix it, or set data.dataset.on_bad_record = \"skip\"")
        else:
            skipped.append(f"{where}: {problem}")
    if skipped:
        report(f"{source}: skipped {len(skipped)} of {len(entries)} records that are not instruction records (first: {skipped[0]})")
    if not records:
        raise GptkitError(f"{source}: no usable records: all {len(entries)} are bad (first: {skipped[0]})")
    return records


def read_records(path: str, cache: Path, on_bad_record: str) -> tuple[str, list[dict[str, Any]]]:
    """(the file read, its valid records) for a local path or a URL (downloaded once into `cache`)."""
    file = download_once(path, cache) if is_url(path) else Path(path)
    if file.is_dir():
        raise GptkitError(f"{file}: is a folder; expected a file holding {FORMATS}")
    source = str(file)
    return source, valid_records(parse_records(read_text(file), source), source, on_bad_record)


@attrs.define
class AlpacaJsonParams:
    path: str = path_field(attrs.NOTHING)  # a JSON array file, a JSON Lines file, or an http(s) URL
    cache_dir: str | None = path_field()  # None: $GPTKIT_CACHE or ~/.cache/gptkit
    on_bad_record: Literal["error", "skip"] = attrs.field(default="error", validator=attrs.validators.in_(("error", "skip")))
    on_too_long: Literal["truncate", "drop"] = attrs.field(default="truncate", validator=too_long_choice)
    max_length: int | None = attrs.field(default=None, validator=optional_length)  # None: the context length
    max_records: int | None = attrs.field(default=None, validator=optional_length)  # the file's first N valid records; None: all


def alpaca_json_dataset(
    ctx, path: str, cache_dir: str | None, on_bad_record: str, on_too_long: str, max_length: int | None, max_records: int | None
) -> list[Example]:
    source, records = read_records(path, Path(cache_dir) if cache_dir else default_cache_dir(), on_bad_record)
    return examples_from_records(records[:max_records], ctx, source, max_length, on_too_long)


@hookimpl
def register_components(registry):
    doc = "Instruction records (instruction, input, output) from a JSON array, JSON Lines or a URL, in [data] prompt's format."
    registry.dataset.register("alpaca-json", alpaca_json_dataset, params=AlpacaJsonParams, doc=doc)
