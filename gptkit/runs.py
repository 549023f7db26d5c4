"""One run setup for every recipe, and the `Run` object that training hooks receive as `run`.

`setup_run(config)` does, once and in this order, what every recipe needs before its own work: pick
the device and thread count, seed, find the run folder, build the tokenizer and prompt format (the
Context), build the model and check that it fits the tokenizer, and resolve the precision. Nothing is
written yet: a run that fails while setting up leaves no folder behind. The recipe calls
`run.write_config()` when its real work starts; that writes config.toml (the resolved config plus
provenance) and so creates the run folder, which the run holds locked (gptkit.lock) from then on.
`gptkit.run(config)` dispatches to the config's recipe and releases the folders it set up.

On resume, `Run.check_resume` compares the settings the checkpoint was trained with against the
new ones: it is the one place that decides whether a checkpoint belongs to this run.
"""

from __future__ import annotations

import contextvars
import json
import os
import platform
import random
import shlex
import subprocess
from pathlib import Path
from typing import Any, Sequence

import attrs
import numpy as np
import tomli_w
import torch
from tqdm import tqdm

from gptkit import distributed, plugins
from gptkit.adapters import apply_adapter
from gptkit.config import Config, to_raw
from gptkit.schema import flatten
from gptkit.errors import GptkitError
from gptkit.files import atomic_write_text
from gptkit.interfaces import Context
from gptkit.lock import FolderLock
from gptkit.model import GPT
from gptkit.plugins import registry
from gptkit.version import __version__
from gptkit.weights import check_vocab, model_with_weights

@attrs.define
class Run:
    """One run, as recipes, the training engine and hooks see it.

    `config` the resolved config; `out_dir` the run folder; `device`; `ctx` the Context the run's
    components were built with (tokenizer, prompt format, model_config); `model` the model (the
    module that trains, unwrapped); `precision` what `train.precision` resolved to here (fp32, bf16
    or fp16); `step` the last finished optimizer step; `rank` / `world_size` this process's place among
    the processes of the run (0 / 1 for one process); `is_main` whether this process writes the
    folder, which it holds locked from `claim_folder` to `close`; `trackers` the `[track]` trackers
    that `track` built, until `close`; `observers` what the caller of `gptkit.run` gave to watch
    the run. Trackers and observers receive the run's hooks (see `hooks`), and may end training
    early with `request_stop`.
    """

    config: Config
    out_dir: Path
    device: torch.device
    ctx: Context
    model: torch.nn.Module
    precision: str = "fp32"
    step: int = 0
    rank: int = 0
    world_size: int = 1
    strategy: str = "single"
    folder_lock: FolderLock | None = None
    trackers: list[Any] = attrs.field(factory=list)
    observers: list[Any] = attrs.field(factory=list)
    stop_request: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def tokenizer(self):
        return self.ctx.tokenizer

    def claim_folder(self) -> None:
        """Create the run folder and lock it for this process (the main one), once: a second run
        writing the same folder is refused, naming this one."""
        if self.is_main and self.folder_lock is None:
            lock = FolderLock(self.out_dir)
            lock.acquire()
            self.folder_lock = lock

    def say(self, text: str) -> None:
        """A line for the user, printed above the progress bar, by the main process only."""
        if self.is_main:
            tqdm.write(text)

    def hooks(self, *observers: Any) -> Any:
        """The hook relay for this run's events: in the main process, first the `observers` given
        here (the engine's run-folder writer), this run's trackers and observers, then every plugin's
        hooks; elsewhere one that calls nothing, so that each event is seen once, not once per process."""
        return plugins.RunHooks([*observers, *self.trackers, *self.observers]) if self.is_main else _NoHooks()

    def request_stop(self, reason: str) -> None:
        """Ask training to end after the current step, saving a checkpoint as early stopping does,
        and say `reason`: for observers, such as a sweep's scheduler stopping a trial that falls behind."""
        self.stop_request = reason

    def track(self) -> None:
        """Build the `[track]` trackers, which then receive this run's hooks until `close`: once,
        and in the main process only (N processes make one tracked run, not N)."""
        if self.is_main and not self.trackers:
            self.trackers = [registry.tracker.build(spec, self.ctx) for spec in self.config.track.trackers]

    def close(self) -> None:
        """Drop the trackers and release the run folder (`gptkit.run` does it when the recipe
        returns or fails, after the `on_run_end` hook)."""
        self.trackers = []
        if self.folder_lock is not None:
            self.folder_lock.release()
            self.folder_lock = None

    def write_config(self) -> None:
        """config.toml: the resolved config plus provenance, written atomically (claims the folder)."""
        if not self.is_main:
            return
        self.claim_folder()
        info = {**self.config.provenance, **provenance(self.device), "precision": self.precision, "world_size": self.world_size, "strategy": self.strategy}
        atomic_write_text(self.out_dir / "config.toml", config_toml(attrs.evolve(self.config, provenance=info)))

    def check_resume(self, checkpoint: Path, step: int, saved: dict[str, Any] | None, facts: dict[str, tuple[Any, Any]]) -> list[str]:
        """Compare the settings `checkpoint` (of `step`) was trained with, `saved` (a raw config as
        `to_raw` gives, with its provenance; None in a checkpoint older than this check), against
        this run's, before resuming from there. `facts` are values the engine derives, as (then,
        now): the steps per epoch tell a changed data file.

        Changes that alter the trajectory (see `trajectory_changes`) are refused with the list of
        them, unless `run.resume_changes = "allow"`. Every change is recorded with the step in
        provenance.resumes, oldest first, which config.toml keeps. Returns the changes."""
        altering, free = trajectory_changes(saved, to_raw(self.config)) if saved is not None else ([], [])
        altering += [f"{name}: {then} -> {now}" for name, (then, now) in facts.items() if then != now]
        if altering and self.config.run.resume_changes != "allow":
            raise GptkitError(
                f"run.resume: {checkpoint} was trained with other settings; these would change the run's course:\n"
                + "".join(f"  {line}\n" for line in altering)
                + "resume with the settings it was trained with, or set run.resume_changes=allow to go on with "
                "these (config.toml records them and the step), or start anew in another run.out_dir"
            )
        history = list((saved or {}).get("provenance", {}).get("resumes", []))
        if altering or free:
            history.append({"step": step, "checkpoint": os.path.abspath(checkpoint), "changes": altering + free})
        self.config = attrs.evolve(self.config, provenance={**self.config.provenance, "resumes": history})
        return altering + free

    def resume_command(self, checkpoint: Path) -> str:
        """The command line that continues this run from `checkpoint`: the one that started it
        (recorded by the CLI in provenance) with run.resume set."""
        command = self.config.provenance.get("command")
        if not command:
            return f"gptkit run EXPERIMENT.toml run.resume={shlex.quote(str(checkpoint))}"
        kept = [a for a in command if not a.startswith(("run.resume=", "~run.resume"))]
        return shlex.join([*kept, f"run.resume={checkpoint}"])


class _NoHooks:
    """The hook relay of a process other than the main one (see `Run.hooks`)."""

    def __getattr__(self, name: str):
        return lambda **kwargs: []


@attrs.define
class _Scope:
    """What `run` hands the runs its recipe sets up (the caller's observers), and the runs it collects."""

    observers: list[Any]
    opened: list[Run] = attrs.field(factory=list)


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("gptkit_run_scope", default=None)


def setup_run(config: Config) -> Run:
    """Everything a recipe needs before its own work (see the module docstring); writes nothing.

    Under torchrun it also joins the process group (see gptkit.distributed): every rank builds the
    same model from the same seed, then reseeds its own RNG (dropout) from (seed, rank); rank 0
    keeps the seed as it is, so one process trains as it always did."""
    processes = distributed.Processes.from_env()
    strategy = distributed.resolve_strategy(config.train.strategy, processes)
    device = distributed.device_for(config.run.device, processes, resolve_device(config.run.device))
    if device.type == "cuda":
        allow_tf32()
    if config.run.threads is not None:
        torch.set_num_threads(config.run.threads)
    distributed.start(processes, device)
    seed_everything(config.run.seed)
    out_dir = run_folder(config)
    ctx = build_context(config, device, out_dir)
    model = build_model(config, ctx)
    if processes.rank:
        torch.manual_seed(config.run.seed * 1_000_003 + processes.rank)
    run = Run(
        config, out_dir, device, ctx, model,
        precision=resolve_precision(config.train.precision, device),
        rank=processes.rank, world_size=processes.world_size, strategy=strategy,
    )
    scope = _scope.get()
    if scope is not None:
        run.observers = list(scope.observers)
        scope.opened.append(run)
    return run


def run_folder(config: Config) -> Path:
    """The run's folder: `run.out_dir`, else runs/<run.name> in the working directory."""
    return Path(config.run.out_dir or os.path.join("runs", config.run.name))


def run(config: Config, observers: Sequence[Any] = ()) -> dict[str, Any]:
    """Run a resolved config with its recipe; returns the recipe's final metrics. `observers`
    (objects with `@hookimpl` methods) receive the hooks of the runs the recipe sets up, and no
    other run's. When the recipe returns or fails, each run it set up gets the `on_run_end` hook
    and its folder is released. A training run stopped by SIGINT or SIGTERM raises
    gptkit.errors.RunInterrupted once its checkpoint is saved."""
    recipe = registry.recipe.get(config.run.recipe).factory
    scope = _Scope(list(observers))
    token = _scope.set(scope)
    metrics: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        metrics = recipe(config)
        distributed.barrier()  # no rank leaves the process group while another still works in it
        return metrics
    except BaseException as exc:
        error = exc
        raise
    finally:
        _scope.reset(token)
        for each in scope.opened:
            try:
                each.hooks().on_run_end(run=each, metrics=metrics, error=error)
            finally:
                each.close()
        distributed.stop()


# --- the pieces of the setup --------------------------------------------------------------------


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


def allow_tf32() -> None:
    """fp32 matmuls on CUDA run on TF32 tensor cores (Ampere and later; about 3e-4 relative error, far
    under training noise): fp32 runs and what bf16 autocast leaves in fp32 go several times faster."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; mixing it with allow_tf32 is an error there
        matmul.fp32_precision = "tf32"
    else:
        matmul.allow_tf32 = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 autocast is
    about 1.6x faster than fp32 for GPT-2 training; elsewhere it is emulated and slower."""
    cpu = torch.cpu
    return any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32, bf16 or fp16. `auto` is bf16 mixed precision (fp32 weights and optimizer) where the
    hardware computes bf16 natively: CUDA GPUs that support it, CPUs with AVX512-BF16 or AMX; else fp32."""
    if precision != "auto":
        return precision
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_bf16()
    return "bf16" if native else "fp32"


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


def build_model(config: Config, ctx: Context) -> GPT:
    """The GPT of `[model]`, randomly initialised or loaded from `[init] checkpoint`; on ctx.device."""
    if config.init.checkpoint is not None:
        loaded = registry.checkpoint.build(config.init.checkpoint, ctx).load()
        model_config = config.model.resolved(base=loaded.model_config)
        model = model_with_weights(model_config, loaded.state_dict, f"init.checkpoint ({config.init.checkpoint.name})")
        if config.init.adapter is not None:
            apply_adapter(model, config.init.adapter)
        ctx.tokenizer = loaded.tokenizer or registry.tokenizer.build(config.data.tokenizer, ctx)
    else:
        model_config = config.model.resolved()
        model = GPT(model_config)
    ctx.model_config = model_config
    check_vocab(model_config, ctx.tokenizer, "model")
    return model.to(ctx.device)


# --- resuming with changed settings ----------------------------------------------------------------

# Keys (or whole tables) whose change on resume leaves the weights at every step as they were:
# where the run writes, how often it evaluates and saves, what it samples, scores and reports.
# Every other key alters the trajectory (model, init, data, batch, optimizer, schedule, seed,
# precision, finetune), a plugin's parameters included. The device is free: moving a run to another
# machine does not make it another experiment; so are the strategy and the number of processes,
# which split the same global batch and the same loss however they run it (gptkit.training).
FREE_ON_RESUME = (
    "run.name", "run.out_dir", "run.device", "run.threads",
    "train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints",
    "train.save_best", "train.early_stopping_patience", "train.compile",
    "train.strategy", "train.activation_checkpointing", "train.cpu_offload",
    "generate", "eval", "track",
)
# Not settings of the run itself: how this start continues it, and what gptkit records about it.
NOT_COMPARED = ("run.resume", "run.resume_changes", "provenance")
# The run's length: free with a constant learning rate, but it stretches a cosine schedule.
FREE_WITH_CONSTANT_LR = ("train.max_steps", "train.epochs")


def trajectory_changes(then: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(changes that alter the trajectory, changes that do not) from raw config `then` to `now`,
    each as `dotted.key: old -> new`."""
    old, new = flatten(then), flatten(now)
    constant = old.get("train.lr_schedule") == new.get("train.lr_schedule") == "constant"
    altering, free = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) == new.get(key) or under(key, NOT_COMPARED):
            continue
        line = f"{key}: {show(old.get(key))} -> {show(new.get(key))}"
        is_free = under(key, FREE_ON_RESUME) or (constant and under(key, FREE_WITH_CONSTANT_LR))
        (free if is_free else altering).append(line)
    return altering, free


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def show(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


# --- config.toml ----------------------------------------------------------------------------------


def provenance(device: torch.device | str) -> dict[str, Any]:
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
