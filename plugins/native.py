"""`gptkit`: gptkit's own model folders (gptkit.checkpoint's format) and run folders, as a checkpoint
loader, so `[init] checkpoint = { name = "gptkit", path = "runs/x" }` starts from a trained model
and `gptkit export SOURCE DIR --format gptkit` converts any source into one."""

from __future__ import annotations

from pathlib import Path

import attrs

from gptkit import hookimpl
from gptkit.checkpoint import is_model_dir, load_folder, run_model_dir, save_model
from gptkit.schema import path_field
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, LoadedModel
from gptkit.weights import model_with_weights


@attrs.define
class GptkitParams:
    path: str | None = path_field()  # a model folder, or a run folder (its latest checkpoint)


class GptkitLoader:
    def __init__(self, ctx: Context, path: str | None):
        self.ctx = ctx
        self.path = path

    def can_load(self, source: str) -> bool:
        path = Path(source)
        return path.is_dir() and (is_model_dir(path) or run_model_dir(path) is not None)

    def load(self, source: str | None = None) -> LoadedModel:
        source = source or self.path
        if source is None:
            raise GptkitError("checkpoint 'gptkit' needs a path (a model folder or a run folder)")
        path = Path(source)
        if not path.is_dir():
            raise GptkitError(f"{path}: no such folder")
        loaded = load_folder(path, self.ctx)
        if loaded is None:
            raise GptkitError(f"{path}: neither a gptkit model folder nor a run folder holding a model")
        return loaded

    def download(self, name: str) -> Path:
        raise GptkitError(f"{name}: gptkit model folders are local; there is nothing to download")

    def save(self, loaded: LoadedModel, directory: str | Path) -> Path:
        model = model_with_weights(loaded.model_config, loaded.state_dict, "export")
        return save_model(directory, model, loaded.tokenizer, prompt=loaded.prompt)


@hookimpl
def register_components(registry):
    registry.checkpoint.register("gptkit", GptkitLoader, params=GptkitParams, doc="gptkit's own model folders (safetensors + config.json) and run folders.")
