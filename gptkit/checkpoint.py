"""gptkit's own model format, run checkpoints, and atomic file writing.

A model folder holds:
    model.safetensors   weights in gptkit's canonical names (the tied head is not stored twice)
    config.json         {"format": "gptkit", "version": 1, "model": GPTConfig, "tokenizer": spec}
    + the tokenizer's files (e.g. tokenizer.tiktoken), named relative to the folder by its spec
Weights load with safetensors only: nothing in a model folder is unpickled.

A run checkpoint, `<run>/checkpoints/step-000123/`, is a model folder plus `training_state.pt`
(optimizer, scheduler, step, RNG states, ...: tensors and plain values only, read back with
`torch.load(weights_only=True)`). `<run>/checkpoints/best/` is the model with the best val_loss.
Every folder is written beside its final place and renamed into it, so a crash or a full disk
leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptkit.config import Component, to_raw
from gptkit.errors import GptkitError
from gptkit.files import fsync_file, replace_dir
from gptkit.interfaces import Context, LoadedModel
from gptkit.model import GPTConfig
from gptkit.plugins import registry

FORMAT = "gptkit"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "training_state.pt"
CHECKPOINTS = "checkpoints"
BEST = "best"
MODEL = "model"  # <run>/model/: the model of a run that does not train (the generate recipe)
STEP_DIR = re.compile(r"step-(\d+)$")


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tied head (safetensors stores no shared tensors) and contiguous."""
    state = model.state_dict()
    if getattr(model.config, "tie_weights", False):
        state.pop("head.weight", None)
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_model_files(
    directory: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    weights: dict[str, torch.Tensor] | None = None,
    prompt: Component | None = None,
) -> None:
    """Write model.safetensors, config.json and the tokenizer's files into `directory` (which exists).

    `weights` (in canonical names, as from `model_state_for_saving`) replaces the model's current
    ones, e.g. a snapshot or merged adapters. `prompt` is the prompt format the model was trained
    with, recorded so that `gptkit chat` and `gptkit generate` can use it again."""
    directory = Path(directory)
    weights = model_state_for_saving(model) if weights is None else weights
    save_file({k: v.cpu() for k, v in weights.items()}, str(directory / WEIGHTS))
    spec = tokenizer.save(directory) if hasattr(tokenizer, "save") else {"name": tokenizer.name}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": model.config.to_dict(), "tokenizer": spec}
    if prompt is not None:
        meta["prompt"] = to_raw(prompt)
    (directory / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in os.listdir(directory):
        fsync_file(directory / name)


def save_model(
    directory: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    prompt: Component | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a model folder atomically: into a temp folder beside it, then renamed into place.

    `state` (plain values and tensors) is saved beside the weights as the training state;
    `extra_files(folder)` may add files (e.g. a finetune strategy's adapter); the rest as `save_model_files`."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        if state is not None:
            torch.save(state, tmp / STATE)
        if extra_files is not None:
            extra_files(tmp)
        save_model_files(tmp, model, tokenizer, weights, prompt)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        return False
    try:
        return json.loads((path / CONFIG).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def load_model_files(directory: str | Path, ctx: Context | None = None) -> LoadedModel:
    """Read a gptkit model folder: config, weights (safetensors) and tokenizer."""
    directory = Path(directory)
    config_path = directory / CONFIG
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        model_config = GPTConfig.from_dict(meta["model"])
        spec = dict(meta.get("tokenizer") or {"name": "gpt2"})
    except FileNotFoundError:
        raise GptkitError(f"{config_path}: missing (not a gptkit model folder)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise GptkitError(f"{config_path}: not a valid gptkit model config ({type(exc).__name__}: {exc})") from None
    weights = directory / WEIGHTS
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise GptkitError(f"{weights}: missing") from None
    except (SafetensorError, OSError) as exc:
        raise GptkitError(f"{weights}: unreadable or corrupt ({exc})") from None
    if model_config.tie_weights:
        state["head.weight"] = state["tok_emb.weight"]
    name = spec.pop("name")
    if isinstance(spec.get("path"), str):
        spec["path"] = str(directory / spec["path"])
    tokenizer = registry.tokenizer.build(Component(name, spec), ctx or Context())
    prompt = meta.get("prompt")
    return LoadedModel(model_config, state, tokenizer, Component(prompt.pop("name"), prompt) if prompt else None)


# --- run checkpoints ----------------------------------------------------------------------------


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def step_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete `checkpoints/step-N` folders (model and training state), oldest first."""
    found = [(int(m.group(1)), p) for p in (Path(run_dir) / CHECKPOINTS).glob("step-*") if (m := STEP_DIR.search(p.name))]
    return [p for _, p in sorted(found) if (p / STATE).is_file() and is_model_dir(p)]


def run_model_dir(run_dir: Path) -> Path | None:
    """The model a run folder stands for: its latest checkpoint, else the model a non-training
    recipe saved (`model/`), else None."""
    found = step_checkpoints(run_dir)
    if found:
        return found[-1]
    saved = Path(run_dir) / MODEL
    return saved if is_model_dir(saved) else None


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any], keep: int, **files: Any) -> Path:
    """Write `checkpoints/step-N` (model + training state) atomically, then keep only the last `keep`;
    `files` as `save_model` (weights, prompt, extra_files)."""
    path = save_model(step_dir(run_dir, step), model, tokenizer, state, **files)
    for old in step_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The training state of a run checkpoint, unpickled safely (tensors and plain values only)."""
    file = Path(path) / STATE
    if not file.is_file():
        raise GptkitError(f"{path}: not a run checkpoint (no {STATE}); resume from a checkpoints/step-N folder or a run folder")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise GptkitError(f"{file}: unreadable or corrupt ({type(exc).__name__}: {exc})") from None


def resume_path(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint `run.resume` names: none -> None, auto -> the run's latest (or None), else a
    checkpoint folder or a run folder (its latest checkpoint)."""
    if resume == "none":
        return None
    if resume == "auto":
        found = step_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if (path / STATE).is_file():
        return path
    found = step_checkpoints(path) if path.is_dir() else []
    if not found:
        raise GptkitError(f"run.resume: {resume} is neither a run checkpoint (checkpoints/step-N) nor a run folder holding one")
    return found[-1]
