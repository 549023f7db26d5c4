"""`gptkit`: gptkit's own model folders (gptkit.checkpoint's format) and run folders, as a checkpoint
loader, so `[init] checkpoint = { name = "gptkit", path = "runs/x" }` starts from a trained model
and `gptkit export SOURCE DIR --format gptkit` converts any source into one."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch

from gptkit import hookimpl
from gptkit.checkpoint import CONFIG, is_model_dir, load_model_files, save_model
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, LoadedModel


@attrs.define
class GptkitParams:
    path: str | None = None  # a model folder, or a run folder (its latest checkpoint)


class GptkitLoader:
    def __init__(self, ctx: Context, path: str | None):
        self.ctx = ctx
        self.path = path

    def can_load(self, source: str) -> bool:
        from gptkit.sources import latest_checkpoint

        path = Path(source)
        return path.is_dir() and (_is_gptkit_config(path) or latest_checkpoint(path) is not None)

    def load(self, source: str | None = None) -> LoadedModel:
        from gptkit.sources import latest_checkpoint

        source = source or self.path
        if source is None:
            raise GptkitError("checkpoint 'gptkit' needs a path (a model folder or a run folder)")
        path = Path(source)
        if not path.is_dir():
            raise GptkitError(f"{path}: no such folder")
        if not is_model_dir(path) and not _is_gptkit_config(path):
            path = latest_checkpoint(path) or path
        return load_model_files(path, self.ctx)

    def download(self, name: str) -> Path:
        raise GptkitError(f"{name}: gptkit model folders are local; there is nothing to download")

    def save(self, loaded: LoadedModel, directory: str | Path) -> Path:
        from gptkit.model import GPT
        from gptkit.sources import load_state

        with torch.device("meta"):
            model = GPT(loaded.model_config)
        model.to_empty(device="cpu")
        load_state(model, loaded.state_dict, "export")
        if loaded.model_config.tie_weights:
            model.head.weight = model.tok_emb.weight
        return save_model(directory, model, loaded.tokenizer)


def _is_gptkit_config(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG).read_text(encoding="utf-8")).get("format") == "gptkit"
    except (OSError, ValueError, AttributeError):
        return False


@hookimpl
def register_components(registry):
    registry.checkpoint.register(
        "gptkit", GptkitLoader, params=GptkitParams, doc="gptkit's own model folders (safetensors + config.json) and run folders."
    )
