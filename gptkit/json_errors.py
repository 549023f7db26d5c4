"""Malformed JSON in words: json's messages, some of which end mid-phrase ("Unterminated string
starting at", the position following them in str(exc)), as whole phrases, placed by file, line and
column. Light (no torch), for the modules that read JSON before any model: gptkit.gpt2_files,
the tokenizers, the datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

JSON_REASONS = {
    "Expecting value": "a value was expected",
    "Expecting property name enclosed in double quotes": "a key in double quotes was expected",
    "Expecting ',' delimiter": "a comma was expected",
    "Expecting ':' delimiter": "a colon was expected",
    "Unterminated string starting at": "a string starts there and is never closed",
    "Invalid control character at": "a control character (a raw tab or line break) inside a string",
    "Invalid \\escape": "an invalid backslash escape",
    "Invalid \\uXXXX escape": "an invalid \\uXXXX escape",
    "Extra data": "more data after the JSON value",
}


def json_reason(exc: json.JSONDecodeError) -> str:
    """Why the JSON is malformed, as a whole phrase (its position is exc.lineno, exc.colno)."""
    return JSON_REASONS.get(exc.msg) or exc.msg.removesuffix(" at")


def malformed_json(path: str | Path, exc: json.JSONDecodeError, line: int = 1) -> str:
    """'PATH: malformed JSON at line L, column C: why'. `line`: the file's line where the text that
    json read begins (a JSON Lines line), when it is not the whole file."""
    return f"{path}: malformed JSON at line {line - 1 + exc.lineno}, column {exc.colno}: {json_reason(exc)}"
