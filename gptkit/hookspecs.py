"""Every hook gptkit calls, in one place. Plugins implement them with `@gptkit.hookimpl`.

A plugin is a module (or object) named by an entry point in group "gptkit". Hooks are only ever
added: changing a hook's meaning means a new hook name.

The training events receive `run`, a `gptkit.runs.Run`: `run.config` (the resolved config),
`run.out_dir`, `run.device`, `run.ctx` (tokenizer, prompt format, model_config), `run.model`,
`run.precision`, `run.step` (the last finished optimizer step), `run.rank`, `run.world_size` and
`run.is_main`. `metrics` is the row written to metrics.jsonl. Every plugin's implementations hear
every run's events. A run's own observers hear only that run's: the trackers named in `[track]`,
built by the main process (`run.is_main`) when training starts and kept until the run is closed
(`on_run_end` included), and the objects passed as `gptkit.run(config, observers=[...])`. Any
implementation may call `run.request_stop(reason)` to end training after the current step, with a
checkpoint, as early stopping does (a sweep's scheduler stops trials that fall behind this way).
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
    the order in which plugins register is not defined. The factory may keep `registry` for that:
    besides this plugin's own names it finds every other plugin's, built-ins included.
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
    """A checkpoint was written (atomically) to the folder `path`. `train.keep_checkpoints` may
    remove the folder at a later checkpoint: copy what you need from it here."""


@hookspec
def on_train_end(run, metrics):
    """Training ended; `metrics` is the last logged row."""


@hookspec
def on_sample(run, step, text):
    """A sample was generated at step `step` (each epoch's end and the last step) and appended to samples.txt."""


@hookspec
def on_train_error(run, error):
    """Training stopped on `error` instead of ending: a GptkitError (e.g. a NaN loss), any other
    exception, KeyboardInterrupt, or gptkit.errors.RunInterrupted when SIGINT or SIGTERM stopped it
    after saving a checkpoint (then `on_train_end` came first). The error is raised on afterwards."""


@hookspec
def on_run_end(run, metrics, error):
    """The recipe is done with `run`, just before `gptkit.run` releases its folder: `metrics` are the
    recipe's final results (for the instruct recipe, the last row plus the scorers' means; {} when it
    failed) and `error` the exception that ended it, or None. Trackers finish here."""
