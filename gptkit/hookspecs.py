"""Every hook gptkit calls, in one place. Plugins implement them with `@gptkit.hookimpl`.

A plugin is a module (or object) named by an entry point in group "gptkit". Hooks are only ever
added: changing a hook's meaning means a new hook name.

The training events receive `run`, a `gptkit.runs.Run`: `run.config` (the resolved config),
`run.out_dir`, `run.device`, `run.ctx` (tokenizer, prompt format, model_config), `run.model`,
`run.precision`, `run.step` (the last finished optimizer step), `run.rank`, `run.world_size` and
`run.is_main`. `metrics` is the row written to metrics.jsonl. A tracker named in `[track]` is
registered with the plugin manager for the run's duration, so it receives these calls.
"""

from __future__ import annotations

import pluggy

PROJECT = "gptkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_components(registry):
    """Add components: `registry.<kind>.register(name, factory, params=Params, doc="...")`.

    Only register here. Look other components up lazily, inside your factory, never in this hook:
    the order in which plugins register is not defined.
    """


@hookspec
def register_commands(cli):
    """Add click commands to the `gptkit` command group (`cli.add_command(...)`)."""


@hookspec
def on_train_start(run):
    """Training starts (also after a resume: `run.step` is then the checkpoint's step)."""


@hookspec
def on_step_end(run, step, metrics):
    """An optimizer step ended; `metrics` is the row written to metrics.jsonl."""


@hookspec
def on_eval(run, step, metrics):
    """An evaluation ended; `metrics` holds `train_loss` and `val_loss` among the row's keys."""


@hookspec
def on_checkpoint(run, step, path):
    """A checkpoint was written (atomically) to the folder `path`."""


@hookspec
def on_train_end(run, metrics):
    """Training ended; `metrics` is the last logged row."""
