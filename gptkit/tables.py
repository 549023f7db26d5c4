"""Plain-text tables for the terminal: `gptkit plugins`, `gptkit list KIND NAME`, a sweep's trials."""

from __future__ import annotations


def aligned(rows: list[list[str]], gap: str = "  ") -> list[str]:
    """`rows` of cells as lines, each column as wide as its widest cell (the last one unpadded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [gap.join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip() for row in rows]
