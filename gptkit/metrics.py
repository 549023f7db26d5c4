"""metrics.jsonl, the run's own record of its steps (DESIGN's metrics keys): written by the training
engine, read back by resume, sweeps and trackers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from gptkit.errors import GptkitError, GptkitWarning
from gptkit.files import append_text, atomic_write_text
from gptkit.json_errors import json_reason


class MetricsLog:
    """metrics.jsonl: one JSON row per step, appended whole or not at all. On resume, rows after the
    checkpoint's step are dropped (see `read_metrics`). With `write` False (ranks other than 0) the
    rows are kept in memory only."""

    def __init__(self, path: Path, keep_through: int | None, write: bool = True):
        self.path = path
        self.writes = write
        self.rows: list[dict[str, Any]] = []
        if keep_through is not None and path.is_file():
            self.rows = [r for r in read_metrics(path) if r["step"] <= keep_through]
        if write:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict[str, Any]) -> None:
        if self.writes:
            append_text(self.path, json.dumps(row) + "\n")
        self.rows.append(row)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl. A last line with no newline after it is a write cut short (a
    kill, a full disk): it is dropped with a warning. Any other bad line is an error naming it."""
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise ValueError("a row is a JSON object with an integer step")
        except ValueError as exc:  # also bad UTF-8 and bad JSON
            if number == len(lines):
                warnings.warn(f"{path}: line {number}, the last, was cut short by an interrupted write; dropped it", GptkitWarning)
                break
            why = f"malformed JSON at column {exc.colno}: {json_reason(exc)}" if isinstance(exc, json.JSONDecodeError) else exc
            raise GptkitError(f"{path}: line {number} is not a metrics row ({why}); correct or delete that line") from None
        rows.append(row)
    return rows
