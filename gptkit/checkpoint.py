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
leaves the previous checkpoint as it was; a failed write is a WriteError naming the file.

Every folder lists its files' sizes and sha256 in `checksums.json`, written with it and checked when
its files are read (the size first, which catches a truncated file for free), so a damaged file is an
error naming it, never weights loaded silently wrong. Where a run folder stands for a model (resume,
`gptkit generate RUN`), a damaged checkpoint is skipped with a warning for the newest intact one.
A killed run's leftovers (temp folders, half-pruned checkpoints) are cleared by `clean_run_folder`
when the run starts again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptkit.config import Component, to_raw
from gptkit.errors import CorruptCheckpoint, GptkitError
from gptkit.files import save_safetensors, atomic_dir, recover_replaced_dirs, remove_temp_files, sha256_file, writing
from gptkit.json_errors import malformed_json
from gptkit.interfaces import Context, LoadedModel
from gptkit.model import GPTConfig
from gptkit.plugins import GptkitWarning, registry

FORMAT = "gptkit"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "training_state.pt"
CHECKSUMS = "checksums.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
MODEL = "model"  # <run>/model/: the model of a run that does not train (the generate recipe)
STEP_DIR = re.compile(r"step-(\d+)$")


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tied head (safetensors stores no shared tensors) and contiguous."""
    return canonical_weights(model.state_dict(), model.config)


def canonical_weights(state: dict[str, torch.Tensor], model_config: GPTConfig) -> dict[str, torch.Tensor]:
    """A full state dict as a model folder holds it: no tied head, contiguous tensors."""
    if getattr(model_config, "tie_weights", False):
        state = {k: v for k, v in state.items() if k != "head.weight"}
    return {k: v.detach().contiguous() for k, v in state.items()}


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

    The folder holds model.safetensors, config.json, the tokenizer's files and checksums.json.
    `weights` (in canonical names, as from `model_state_for_saving`) replaces the model's current
    ones, e.g. a snapshot or merged adapters. `prompt` is the prompt format the model was trained
    with, recorded so that `gptkit chat` and `gptkit generate` can use it again. `state` (plain values
    and tensors) is saved beside the weights as the training state; `extra_files(folder)` may add
    files (e.g. a finetune strategy's adapter). Files follow the umask. A failure is a WriteError
    naming the file as it would be named in place, and leaves no folder behind."""
    final = Path(directory)
    with atomic_dir(final) as tmp:
        if state is not None:
            with writing(final / STATE), open(tmp / STATE, "wb") as f:
                torch.save(state, f)  # through a file object: a full disk is then an OSError, not a RuntimeError
        if extra_files is not None:
            with writing(final):
                extra_files(tmp)
        weights = model_state_for_saving(model) if weights is None else weights
        with writing(final / WEIGHTS):
            save_safetensors({k: v.cpu() for k, v in weights.items()}, tmp / WEIGHTS)
        with writing(final):
            spec = tokenizer.save(tmp) if hasattr(tokenizer, "save") else {"name": tokenizer.name}
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "model": model.config.to_dict(), "tokenizer": spec}
        if prompt is not None:
            meta["prompt"] = to_raw(prompt)
        with writing(final / CONFIG):
            (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        with writing(final / CHECKSUMS):
            write_checksums(tmp)
    return final


def write_checksums(folder: Path) -> None:
    """checksums.json: the size and sha256 of every file in `folder`."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    (folder / CHECKSUMS).write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")


def verify(folder: Path, *, state: bool) -> None:
    """Check the files of `folder` against its checksums.json: all sizes first, then the sha256 of
    each; `state` checks the training state only, else every other file. A folder saved before gptkit
    wrote checksums has none to check. Raises CorruptCheckpoint naming the damaged file."""
    listing = folder / CHECKSUMS
    if not listing.is_file():
        return
    try:
        files = json.loads(listing.read_text(encoding="utf-8"))["files"]
        expected = {name: (int(f["size"]), str(f["sha256"])) for name, f in files.items() if (name == STATE) == state}
    except json.JSONDecodeError as exc:
        raise CorruptCheckpoint(malformed_json(listing, exc)) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{listing}: unreadable ({type(exc).__name__}: {exc})") from None
    for name, (size, _) in expected.items():
        try:
            found = (folder / name).stat().st_size
        except FileNotFoundError:
            raise CorruptCheckpoint(f"{folder / name}: missing") from None
        if found != size:
            raise CorruptCheckpoint(f"{folder / name}: {found} bytes, but {size} were written (truncated or damaged)")
    for name, (_, digest) in expected.items():
        if sha256_file(folder / name) != digest:
            raise CorruptCheckpoint(f"{folder / name}: damaged (its sha256 differs from the one written with it)")


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
    verify(directory, state=False)
    config_path = directory / CONFIG
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
        model_config = GPTConfig.from_dict(meta["model"])
        spec = dict(meta.get("tokenizer") or {"name": "gpt2"})
    except FileNotFoundError:
        raise GptkitError(f"{config_path}: missing (not a gptkit model folder)") from None
    except json.JSONDecodeError as exc:
        raise CorruptCheckpoint(malformed_json(config_path, exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{config_path}: not a valid gptkit model config ({type(exc).__name__}: {exc})") from None
    weights = directory / WEIGHTS
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise GptkitError(f"{weights}: missing") from None
    except (SafetensorError, OSError) as exc:
        raise CorruptCheckpoint(f"{weights}: unreadable or corrupt ({exc})") from None
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


def run_models(run_dir: Path) -> list[Path]:
    """The models a run folder holds, the one it stands for first: its checkpoints newest first, then
    `checkpoints/best`, then the model a non-training recipe saved (`model/`)."""
    found = [*reversed(step_checkpoints(run_dir)), Path(run_dir) / CHECKPOINTS / BEST, Path(run_dir) / MODEL]
    return [p for p in found if is_model_dir(p)]


def run_model_dir(run_dir: Path) -> Path | None:
    """The model a run folder stands for (see `run_models`), not yet checked; None if it holds none."""
    found = run_models(run_dir)
    return found[0] if found else None


def load_folder(folder: Path, ctx: Context | None = None) -> LoadedModel | None:
    """The model of a gptkit model folder, or of a run folder (the first of `run_models` that is
    intact); None for a folder that is neither."""
    if is_model_dir(folder):
        return load_model_files(folder, ctx)
    found = run_models(folder)
    return first_intact(found, lambda path: load_model_files(path, ctx))[1] if found else None


T = TypeVar("T")


def first_intact(candidates: list[Path], load: Callable[[Path], T]) -> tuple[Path, T]:
    """(path, load(path)) for the first candidate that loads; a damaged one (CorruptCheckpoint) is
    skipped with a warning naming it and why. The one rule for falling back, for resume and SOURCE."""
    problems = []
    for path in candidates:
        try:
            return path, load(path)
        except CorruptCheckpoint as exc:
            problems.append(str(exc))
            warnings.warn(f"skipping {path}: {exc}", GptkitWarning, stacklevel=2)
    raise CorruptCheckpoint("no intact checkpoint: " + "; ".join(problems))


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any, state: dict[str, Any], keep: int, **files: Any) -> Path:
    """Write `checkpoints/step-N` (model + training state) atomically, then keep only the last `keep`;
    `files` as `save_model` (weights, prompt, extra_files). An old checkpoint is renamed to a temp
    name before it is deleted, so a kill while deleting leaves no half-deleted step folder."""
    path = save_model(step_dir(run_dir, step), model, tokenizer, state, **files)
    for old in step_checkpoints(run_dir)[:-keep]:
        doomed = old.with_name(f".{old.name}.pruned")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The training state of a run checkpoint, checked and unpickled safely (tensors and plain values only)."""
    file = Path(path) / STATE
    if not file.is_file():
        raise GptkitError(f"{path}: not a run checkpoint (no {STATE}); resume from a checkpoints/step-N folder or a run folder")
    verify(Path(path), state=True)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CorruptCheckpoint(f"{file}: unreadable or corrupt ({type(exc).__name__}: {exc})") from None


def resume_candidates(resume: str, run_dir: Path) -> list[Path]:
    """The checkpoints `run.resume` names, to try in order: none -> none, auto -> the run's
    checkpoints newest first (none in a new folder), else that checkpoint folder, or that run
    folder's checkpoints newest first."""
    if resume == "none":
        return []
    if resume == "auto":
        return step_checkpoints(run_dir)[::-1]
    path = Path(resume)
    if (path / STATE).is_file():
        return [path]
    found = step_checkpoints(path) if path.is_dir() else []
    if not found:
        raise GptkitError(f"run.resume: {resume} is neither a run checkpoint (checkpoints/step-N) nor a run folder holding one")
    return found[::-1]


def clean_run_folder(run_dir: Path) -> list[Path]:
    """Clear what a killed run left in its folder: temp files, temp folders of checkpoints being
    written or pruned (`.step-N.*`, `.best.*`), and step folders that lack some of their files (a
    prune cut short by an older gptkit, which deleted in place); a folder caught between the two
    renames that replace it is put back first. A damaged but whole checkpoint is kept. Returns what
    was removed."""
    removed = remove_temp_files(run_dir)
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return removed
    recover_replaced_dirs(folder)
    for path in sorted(folder.iterdir()):
        partly_deleted = STEP_DIR.match(path.name) and not all((path / name).is_file() for name in (WEIGHTS, CONFIG, STATE))
        if path.name.startswith(".") or partly_deleted:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
