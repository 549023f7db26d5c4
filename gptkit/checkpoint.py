"""gptkit's own model format, run checkpoints and the training state they hold.

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
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import attrs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptkit import distributed
from gptkit.errors import CorruptCheckpoint, GptkitError, GptkitWarning, WriteError
from gptkit.files import save_safetensors, atomic_dir, recover_replaced_dirs, remove_temp_files, sha256_file, writing
from gptkit.json_errors import malformed_json
from gptkit.interfaces import Context, LoadedModel
from gptkit.model import GPTConfig
from gptkit.plugins import registry
from gptkit.schema import Component, to_raw
from gptkit.weights import load_state

if TYPE_CHECKING:
    from gptkit.runs import Run
    from gptkit.training import Parts

FORMAT = "gptkit"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "training_state.pt"
CHECKSUMS = "checksums.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
MODEL = "model"  # <run>/model/: the model of a run that does not train (the generate recipe)
RUN_CONFIG = "config.toml"  # <run>/config.toml: the run's resolved config (gptkit.runs writes it)
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
    return LoadedModel(model_config, state, tokenizer, Component(prompt.pop("name"), prompt) if prompt else None, str(directory))


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


def run_folder_of(model_dir: str | Path) -> Path | None:
    """The run folder a model folder belongs to (`<run>/checkpoints/<name>`, `<run>/model`): the one
    holding the run's config.toml; None for a model folder outside a run."""
    model_dir = Path(model_dir)
    run_dir = model_dir.parent.parent if model_dir.parent.name == CHECKPOINTS else model_dir.parent if model_dir.name == MODEL else None
    return run_dir if run_dir is not None and (run_dir / RUN_CONFIG).is_file() else None


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


# --- training state: what a run checkpoint holds besides the model --------------------------------


@attrs.define
class TrainingState:
    """Where training stands besides the weights and `run.step`: saved in every checkpoint and
    restored on resume, so that a resumed run goes on exactly as an uncut one."""

    tokens_seen: int = 0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    best_weights: dict[str, torch.Tensor] | None = None  # the best model so far, until the next checkpoint writes checkpoints/best
    best_trained: dict[str, torch.Tensor] | None = None  # and the finetune's own tensors then (LoRA's adapter), for its files
    resumed_from: Path | None = None


def saved_weights(run: Run, parts: Parts) -> dict[str, torch.Tensor]:
    """The full weights a saved model folder holds, on rank 0 (empty elsewhere); under fsdp every
    rank takes part in gathering them."""
    if run.strategy == "fsdp":
        full = distributed.full_model_state(run.model)
        return canonical_weights(full, run.model.config) if run.is_main else {}
    return parts.finetune.saved_weights(run.model) if run.is_main else {}


def training_state(run: Run, parts: Parts, state: TrainingState) -> dict[str, Any]:
    """The training state of a checkpoint (every rank takes part): the optimizer's state whole, keyed
    by parameter names, and each rank's RNG states, so that it resumes on any number of processes."""
    cuda = torch.cuda.get_rng_state_all() if run.device.type == "cuda" else []
    return {
        "step": run.step,
        "tokens_seen": state.tokens_seen,
        "steps_per_epoch": parts.steps_per_epoch,
        "optimizer": distributed.full_optimizer_state(run.model, parts.optimizer),
        "scaler": parts.scaler.state_dict(),
        "rng": distributed.gather_objects({"torch": torch.get_rng_state(), "cuda": cuda}),  # by rank
        "world_size": run.world_size,
        "best_val_loss": state.best_val_loss,
        "evals_since_best": state.evals_since_best,
        "finetune": parts.finetune.trained_state(run.model),
        "config": to_raw(run.config),  # what Run.check_resume compares on resume
    }


def save_training(run: Run, parts: Parts, state: TrainingState) -> Path:
    """Write checkpoints/step-N, and checkpoints/best when a better model waits: every rank gathers,
    rank 0 writes, and all learn whether it worked. A failed write is an error naming the
    checkpoint that is left intact."""
    saved, weights = training_state(run, parts, state), saved_weights(run, parts)
    failure = None
    if run.is_main:
        previous = step_checkpoints(run.out_dir)
        prompt = run.config.data.prompt
        try:
            if state.best_weights is not None:  # with the adapter of the evaluation that made it best
                save_model(run.out_dir / CHECKPOINTS / BEST, run.model, run.tokenizer, weights=state.best_weights, prompt=prompt,
                           extra_files=lambda folder: parts.finetune.save_files(run.model, folder, state.best_trained))
                state.best_weights = None
            save_checkpoint(run.out_dir, run.step, run.model, run.tokenizer, saved, run.config.train.keep_checkpoints,
                            weights=weights, prompt=prompt, extra_files=lambda folder: parts.finetune.save_files(run.model, folder))
        except WriteError as exc:
            kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
            failure = f"could not save the checkpoint of step {run.step}: {exc}; {kept}"
    failure = distributed.broadcast_object(failure)
    if failure:
        raise GptkitError(failure if run.is_main else f"rank 0 {failure}")
    return step_dir(run.out_dir, run.step)


def resume_training(run: Run, parts: Parts, state: TrainingState) -> bool:
    """Load the checkpoint `run.resume` names, or the newest intact one of those it names, and say
    in one line what happened; False when the run has nothing left to train."""
    resume, out_dir = run.config.run.resume, run.out_dir
    if resume == "none" and step_checkpoints(out_dir):
        raise GptkitError(
            f"{out_dir} holds checkpoints of an earlier run; continue it with run.resume=auto, "
            "or start anew in another run.out_dir (or delete that folder)"
        )
    candidates = resume_candidates(resume, out_dir)
    if not candidates:
        if resume == "auto":
            run.say(f"run.resume=auto: no checkpoint in {out_dir} to resume from; starting at step 0")
        return True
    state.resumed_from, changes = first_intact(candidates, lambda path: load_training(run, parts, state, path))
    if run.step >= parts.total_steps:
        run.say(f"run.resume: {out_dir} finished at step {run.step}; nothing left to train (raise train.max_steps or train.epochs to go on)")
        return False
    run.say(f"resumed from {state.resumed_from} (step {run.step})" + "".join(f"\n  changed: {c}" for c in changes))
    return True


def load_training(run: Run, parts: Parts, state: TrainingState, path: Path) -> list[str]:
    """Resume from `path`: its files are checked (CorruptCheckpoint) and its settings compared
    (`Run.check_resume`) before the model and optimizer take its state. Returns the changed
    settings. A checkpoint of N processes resumes on M: weights and optimizer state are whole;
    rank r takes the RNG states rank r saved (a rank the checkpoint had not keeps its own seed)."""
    saved = load_training_state(path)
    changes = run.check_resume(
        path, saved["step"], saved.get("config"), {"steps per epoch (the data or train.batch_size)": (saved["steps_per_epoch"], parts.steps_per_epoch)}
    )
    if saved.get("finetune") is None:
        weights = load_model_files(path, run.ctx).state_dict
        if run.strategy == "fsdp":
            distributed.load_full_model_state(run.model, weights)
        else:
            load_state(run.model, weights, path)
    else:
        parts.finetune.load_trained_state(run.model, saved["finetune"])
    if "world_size" in saved:
        distributed.load_full_optimizer_state(run.model, parts.optimizer, saved["optimizer"])
    else:  # written by gptkit before distributed training: one process, the optimizer's state by position
        if run.strategy == "fsdp":
            raise GptkitError(f"{path}: a checkpoint of an earlier gptkit resumes under train.strategy \"single\" or \"ddp\", not fsdp")
        parts.optimizer.load_state_dict(saved["optimizer"])
        saved["rng"] = [saved["rng"]]
    parts.scaler.load_state_dict(saved["scaler"])
    if run.rank < len(saved["rng"]):
        rng = saved["rng"][run.rank]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
    run.step, state.tokens_seen = saved["step"], saved["tokens_seen"]
    state.best_val_loss, state.evals_since_best = saved["best_val_loss"], saved["evals_since_best"]
    return changes


def intact(run_dir: Path, resume_command: Callable[[Path], str]) -> str:
    """What a failed write leaves to go on from."""
    last = step_checkpoints(run_dir)
    if not last:
        return "no checkpoint of this run was saved yet"
    return f"the last checkpoint {last[-1]} is intact; resume with: {resume_command(last[-1])}"
