"""What every recipe does first: pick the device, seed, make the run folder, build the shared parts.

Recipes (plugins) call these; `run(config)` dispatches a resolved config to its recipe.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import tomli_w
import torch

from gptkit.config import Config, to_raw
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.registry import registry


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptkitError(f"run.device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GptkitError(f"run.device: {name!r} asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptkitError(f"run.device: {name!r} asked for, but MPS is not available here")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def out_dir_of(config: Config) -> Path:
    return Path(config.run.out_dir or os.path.join("runs", config.run.name))


def provenance(device: torch.device | str) -> dict[str, Any]:
    from gptkit import __version__, plugins

    info: dict[str, Any] = {
        "gptkit_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "plugins": [f"{p.name} ({p.distribution} {p.version})".strip() for p in plugins.loaded() if not p.error],
    }
    commit = _git_commit()
    if commit:
        info["git_commit"] = commit
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def config_toml(config: Config) -> str:
    return tomli_w.dumps(to_raw(config))


def write_run_config(config: Config, out_dir: Path, device: torch.device | str) -> None:
    """config.toml: the resolved config plus provenance, written atomically."""
    import attrs

    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = attrs.evolve(config, provenance=provenance(device))
    atomic_write_text(out_dir / "config.toml", config_toml(resolved))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def decode_utf8(data: bytes, path: str | Path, offset: int = 0, line: int = 1) -> str:
    """UTF-8 text; bad bytes are an error naming the file, line and byte offset (`data` starts at those)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line += data.count(b"\n", 0, exc.start)
        raise GptkitError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, byte offset {offset + exc.start}; "
            "convert it to UTF-8 (e.g. `iconv -t utf-8`)"
        ) from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; an unreadable file or bad bytes are errors naming the file and where."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GptkitError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_utf8(data, path)


def build_context(config: Config, device: torch.device, out_dir: Path | None = None) -> Context:
    """The tokenizer and prompt format, in a Context for the run's other components.

    With `[init] checkpoint` the tokenizer is the checkpoint's (its ids are what the weights know):
    `build_model` puts it in the context, and `[data] tokenizer` is only used if the checkpoint has none.
    """
    ctx = Context(device=device, out_dir=out_dir)
    if config.init.checkpoint is None:
        ctx.tokenizer = registry.tokenizer.build(config.data.tokenizer, ctx)
    if config.data.prompt is not None:
        ctx.prompt = registry.prompt.build(config.data.prompt, ctx)
    return ctx


def build_model(config: Config, ctx: Context):
    """The GPT of `[model]`, randomly initialised or loaded from `[init] checkpoint`; on ctx.device."""
    from gptkit.model import GPT, GPTConfig

    if config.init.checkpoint is not None:
        from gptkit.sources import model_with_weights

        loaded = registry.checkpoint.build(config.init.checkpoint, ctx).load()
        model_config = GPTConfig.from_section(config.model, base=loaded.model_config)
        model = model_with_weights(model_config, loaded.state_dict, f"init.checkpoint ({config.init.checkpoint.name})")
        ctx.tokenizer = loaded.tokenizer or registry.tokenizer.build(config.data.tokenizer, ctx)
    else:
        model_config = GPTConfig.from_section(config.model)
        model = GPT(model_config)
    ctx.model_config = model_config
    if ctx.tokenizer.vocab_size > model_config.vocab_size:
        raise GptkitError(
            f"model.vocab_size = {model_config.vocab_size} is smaller than the tokenizer's "
            f"{ctx.tokenizer.vocab_size} ids ({ctx.tokenizer.name})"
        )
    return model.to(ctx.device)


def run(config: Config) -> dict[str, Any]:
    """Run a resolved config with its recipe; returns the recipe's final metrics."""
    recipe = registry.recipe.get(config.run.recipe).factory
    return recipe(config)
