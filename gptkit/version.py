"""gptkit's version, as installed (a source tree that was never installed says 0.0.0+unknown)."""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("gptkit")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"
