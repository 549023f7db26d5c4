"""Trackers: objects named in `[track] trackers` that observe a run through the training hooks only
(gptkit.hookspecs). The main process builds them when training starts (`Run.track`); the engine
names none of them, and metrics.jsonl stays its own record.

- `wandb`: a Weights & Biases run, written under the run folder (`run_folder/wandb/`). Its config
  is the resolved config with dotted keys (`train.lr`), so the W&B UI groups by any key; its history
  is every metrics.jsonl row at its step; the epoch samples are a `wandb.Table` (`samples`), loss.png
  an image at the end, each checkpoint optionally a `model` artifact; the summary is the last row,
  `best_val_loss`, and the recipe's final metrics (the instruct recipe's scorer means). `mode`
  online / offline / disabled, else `WANDB_MODE`, else W&B's own choice (online when logged in);
  an offline run is uploaded later with `wandb sync RUN_FOLDER/wandb/offline-run-*`. The W&B run id
  is kept in `run_folder/wandb/run-id`: a resumed gptkit run resumes that W&B run (`resume="allow"`)
  and logs from the step after its checkpoint, so no step is logged twice (offline, W&B writes a
  second run file with the same id whose history starts there). Training that fails finishes the
  W&B run as failed, with gptkit's exit code (2 for a GptkitError); one stopped by Ctrl-C or SIGTERM
  ends with 130 or 143 and is marked preempting for W&B's server, to be resumed.
- `jsonl-mirror`: appends every hook call as a JSON line to a file in the run folder (default
  events.jsonl): a record of what a tracker sees, and the smallest example of one.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Literal

import attrs

from gptkit import hookimpl
from gptkit.errors import GptkitError, RunInterrupted
from gptkit.files import append_text, atomic_write_text
from gptkit.metrics import read_metrics
from gptkit.schema import flatten, to_raw

RUN_ID_FILE = "run-id"  # under run_folder/wandb/, beside W&B's own files


@attrs.define
class WandbParams:
    project: str = "gptkit"
    entity: str | None = None  # W&B's default entity when unset
    mode: Literal["online", "offline", "disabled"] | None = None  # unset: WANDB_MODE, else W&B's default
    name: str | None = None  # the W&B run's display name; unset: run.name
    group: str | None = None
    tags: list[str] = attrs.field(factory=list)
    log_checkpoints: bool = False  # each checkpoint folder as a `model` artifact


class WandbTracker:
    """One W&B run for one gptkit run (a tracker hears its own run's hooks only): opened at
    `on_train_start`, finished at `on_run_end` (or `on_train_error`)."""

    def __init__(self, ctx, *, project, entity, mode, name, group, tags, log_checkpoints):
        try:
            import wandb  # heavy: imported only when a run tracks with W&B
        except ImportError:
            raise GptkitError("track.trackers: the wandb tracker needs the wandb package: pip install 'gptkit[wandb]'") from None
        self.wandb = wandb
        self.init_args = dict(project=project, entity=entity, mode=mode, name=name, group=group, tags=tags)
        self.log_checkpoints = log_checkpoints
        self.wb = None  # the W&B run while it is open
        self.best_val_loss = math.inf
        self.samples: list[list[Any]] = []

    @hookimpl
    def on_train_start(self, run):
        if self.wb is not None:
            return
        id_file = run.out_dir / "wandb" / RUN_ID_FILE
        # A resumed run keeps its W&B id; under `wandb agent` a new one takes the agent's (WANDB_RUN_ID,
        # passed explicitly: W&B reads its environment once per process); else W&B makes one.
        run_id = id_file.read_text().strip() if id_file.is_file() else os.environ.get("WANDB_RUN_ID")
        args = {**self.init_args, "name": self.init_args["name"] or run.config.run.name}
        self.wb = self.wandb.init(
            **args,
            id=run_id,
            resume="allow",
            dir=str(run.out_dir.resolve()),  # absolute: W&B's service process has its own working directory
            config=flatten({k: v for k, v in to_raw(run.config).items() if k != "provenance"}),
            settings=self.wandb.Settings(console="off", silent=True),
        )
        atomic_write_text(id_file, self.wb.id + "\n")
        earlier = [r["val_loss"] for r in read_metrics(run.out_dir / "metrics.jsonl") if "val_loss" in r]
        self.best_val_loss = min(earlier, default=math.inf)

    @hookimpl
    def on_step_end(self, run, step, metrics):
        if not self.wb is not None:
            return
        if "val_loss" in metrics:
            self.best_val_loss = min(self.best_val_loss, metrics["val_loss"])
        self.wb.log(dict(metrics), step=step)

    @hookimpl
    def on_sample(self, run, step, text):
        if self.wb is not None:
            self.samples.append([step, text])  # a Table is immutable: each log holds every sample so far
            self.wb.log({"samples": self.wandb.Table(columns=["step", "text"], data=self.samples)}, step=step)

    @hookimpl
    def on_checkpoint(self, run, step, path):
        if self.wb is not None and self.log_checkpoints:
            artifact = self.wandb.Artifact(f"{run.config.run.name}-checkpoint", type="model", metadata={"step": step})
            artifact.add_dir(str(path))
            self.wb.log_artifact(artifact, aliases=[f"step-{step}", "latest"])

    @hookimpl
    def on_train_end(self, run, metrics):
        if not self.wb is not None:
            return
        plot = run.out_dir / "loss.png"
        if plot.is_file():
            self.wb.log({"loss_plot": self.wandb.Image(str(plot))}, step=run.step)
        self.wb.summary.update(metrics)
        if math.isfinite(self.best_val_loss):
            self.wb.summary["best_val_loss"] = self.best_val_loss

    @hookimpl
    def on_train_error(self, run, error):
        if not self.wb is not None:
            return
        self.wb.summary["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        if isinstance(error, RunInterrupted):
            self.wb.mark_preempting()
        self.finish(getattr(error, "exit_code", 1) or 1)

    @hookimpl
    def on_run_end(self, run, metrics, error):
        if not self.wb is not None:
            return
        if error is None:
            self.wb.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        self.finish(0 if error is None else 1)

    def finish(self, exit_code: int) -> None:
        self.wb.finish(exit_code=exit_code)
        self.wb = None


@attrs.define
class MirrorParams:
    file: str = "events.jsonl"  # in the run folder


class JsonlMirror:
    """Every hook call as one JSON line ({"hook", "step", ...}) appended to `file` in the run folder."""

    def __init__(self, ctx, *, file):
        self.file = file

    def write(self, run, hook: str, **fields: Any) -> None:
        append_text(run.out_dir / self.file, json.dumps({"hook": hook, "step": run.step, **fields}) + "\n")

    @hookimpl
    def on_train_start(self, run):
        self.write(run, "on_train_start")

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self.write(run, "on_step_end", metrics=metrics)

    @hookimpl
    def on_sample(self, run, step, text):
        self.write(run, "on_sample", text=text)

    @hookimpl
    def on_checkpoint(self, run, step, path):
        self.write(run, "on_checkpoint", path=os.path.basename(path))

    @hookimpl
    def on_train_end(self, run, metrics):
        self.write(run, "on_train_end", metrics=metrics)

    @hookimpl
    def on_train_error(self, run, error):
        self.write(run, "on_train_error", error=type(error).__name__)

    @hookimpl
    def on_run_end(self, run, metrics, error):
        self.write(run, "on_run_end", metrics=metrics, error=None if error is None else type(error).__name__)


@hookimpl
def register_components(registry):
    registry.tracker.register("wandb", WandbTracker, params=WandbParams, doc="Weights & Biases: config, metrics, samples, loss plot; online, offline, resumable.")
    registry.tracker.register("jsonl-mirror", JsonlMirror, params=MirrorParams, doc="Every training hook call as a JSON line in the run folder (events.jsonl).")
