"""SOURCE, wherever a command takes one: a run folder, a checkpoint or model folder, or a model name.

gptkit's own folders are read here; anything else is offered to each registered checkpoint loader
(`can_load(source)`), so a plugin can add a format or a hub. A run folder gives its latest
checkpoint (`checkpoints/step-N`), or the model a non-training recipe saved (`model/`); its best
model by val_loss is the folder `checkpoints/best`, a SOURCE of its own. A damaged checkpoint of a
run folder is skipped, with a warning, for the newest intact one.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import attrs
import torch

from gptkit.checkpoint import load_folder
from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, LoadedModel
from gptkit.plugins import registry
from gptkit.weights import model_with_weights


def load_source(source: str | Path, ctx: Context | None = None) -> LoadedModel:
    """The model config, weights and tokenizer that `source` names."""
    ctx = ctx or Context()
    path = Path(source)
    if path.is_dir():
        loaded = load_folder(path, ctx)
        if loaded is not None:
            return loaded
    elif looks_like_path(str(source)):
        raise GptkitError(missing_folder_message(path))
    for entry in registry.checkpoint.entries():
        loader = registry.checkpoint.build(Component(entry.name), ctx)
        if loader.can_load(str(source)):
            loaded = loader.load(str(source))
            return loaded if loaded.origin is not None else attrs.evolve(loaded, origin=str(source))
    known = ", ".join(registry.checkpoint.names()) or "none besides gptkit's own"
    raise GptkitError(
        f"{source}: not a model source (a run folder, a checkpoint or model folder, or a model name; "
        f"checkpoint loaders: {known})"
    )


def looks_like_path(source: str) -> bool:
    """A SOURCE meant as a folder: it starts with `.`, `/` or `~`, or its first component is an
    existing folder (`runs/x`); `openai-community/gpt2` and `gpt2-medium` stay names."""
    if source.startswith((".", "/", "~")):
        return True
    first = Path(source).parts[0] if Path(source).parts else ""
    return "/" in source.replace("\\", "/") and Path(first).is_dir()


def missing_folder_message(path: Path) -> str:
    """'no such folder', with the nearest existing names in its parent folder."""
    parent = path.expanduser().parent
    siblings = [p.name for p in parent.iterdir()] if parent.is_dir() else []
    near = difflib.get_close_matches(path.name, siblings, n=3)
    hint = f"; did you mean {', '.join(str(path.parent / n) for n in near)}?" if near else ""
    return f"{path}: no such folder{hint}"


def load_model(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model in eval mode, tokenizer) from any SOURCE."""
    model, tokenizer, _ = load_model_and_prompt(source, device=device, dtype=dtype)
    return model, tokenizer


def load_model_and_prompt(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model in eval mode, tokenizer, the prompt format it was fine-tuned with or None) from any SOURCE."""
    loaded = load_source(source, Context(device=device))
    model = model_with_weights(loaded.model_config, loaded.state_dict, source, device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval(), loaded.tokenizer, loaded.prompt
