"""gptkit: a plugin-based GPT-2 research toolkit.

Python API: `load_model(source)`, `generate(model, tokenizer, prompt, ...)`, `load_config(path, overrides)`,
`run(config)`, `registry`, `hookimpl`.
"""

from __future__ import annotations

import importlib.metadata

from gptkit.config import Config, load_config
from gptkit.hookspecs import hookimpl
from gptkit.registry import registry

try:
    __version__ = importlib.metadata.version("gptkit")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"


def run(config: Config):
    """Run a resolved config (see `load_config`) with its recipe; returns the recipe's final metrics."""
    from gptkit.runs import run as _run

    return _run(config)


def load_model(source, *, device="cpu", dtype=None):
    """(model, tokenizer) from a run folder, checkpoint or model folder, or a model name."""
    from gptkit.sources import load_model as _load_model

    return _load_model(source, device=device, dtype=dtype)


def generate(model, tokenizer, prompt, **kwargs):
    """The completion of `prompt` (or of each of a list of prompts); see gptkit.generation.generate."""
    from gptkit.generation import generate as _generate

    return _generate(model, tokenizer, prompt, **kwargs)


__all__ = ["generate", "load_model", "Config", "hookimpl", "load_config", "registry", "run", "__version__"]
