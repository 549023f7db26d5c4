"""gptkit: a plugin-based GPT-2 research toolkit.

Python API: `load_model(source)`, `generate(model, tokenizer, prompt, ...)`, `load_config(path, overrides)`,
`run(config)`, `registry`, `hookimpl`.
"""

from __future__ import annotations

from gptkit.config import Config, load_config
from gptkit.generation import generate
from gptkit.hookspecs import hookimpl
from gptkit.plugins import registry
from gptkit.runs import run
from gptkit.sources import load_model
from gptkit.version import __version__

__all__ = ["generate", "load_model", "Config", "hookimpl", "load_config", "registry", "run", "__version__"]
