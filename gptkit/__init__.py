"""gptkit: a plugin-based GPT-2 research toolkit.

Python API: `load_model(source)`, `generate(model, tokenizer, prompt, ...)`, `load_config(path, overrides)`,
`run(config)`, `registry`, `hookimpl`. `run` raises gptkit.errors.RunInterrupted when SIGINT or SIGTERM
stopped the run (after saving a checkpoint), so a caller can tell a cut run from a finished one.

`load_model`, `generate` and `run` load torch on first use, which keeps `import gptkit` quick and lets
the console script (gptkit/__main__.py) catch a Ctrl-C while torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gptkit.config import Config, load_config
from gptkit.hookspecs import hookimpl
from gptkit.plugins import registry
from gptkit.version import __version__

if TYPE_CHECKING:
    from gptkit.generation import generate
    from gptkit.runs import run
    from gptkit.sources import load_model

_ON_FIRST_USE = {"generate": "gptkit.generation", "run": "gptkit.runs", "load_model": "gptkit.sources"}


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'gptkit' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    return value


__all__ = ["generate", "load_model", "Config", "hookimpl", "load_config", "registry", "run", "__version__"]
