"""`gptkit run EXPERIMENT.toml [KEY=VALUE ...]`, in this process or in N (--nproc)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import attrs
import click

from gptkit.commands import Command

from gptkit.config import Config, load_config
from gptkit.errors import GptkitError

LAUNCH_COMMAND = "GPTKIT_LAUNCH_COMMAND"  # the command line of `gptkit run --nproc N`, for the processes it starts


@click.command(cls=Command)
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--nproc", type=click.IntRange(min=1), metavar="N", help="Train in N processes on this machine, started by torchrun's elastic launcher (one per GPU on CUDA).")
@click.pass_context
def run(ctx: click.Context, experiment: str, overrides: tuple[str, ...], nproc: int | None) -> None:
    """Run EXPERIMENT.toml, with KEY=VALUE (or ~KEY) overrides.

    Ctrl-C or SIGTERM saves a checkpoint, prints the command that resumes, and exits 130 or 143.
    Several nodes: start `torchrun ... -m gptkit run EXPERIMENT.toml` on each (see the README)."""
    from gptkit import distributed
    from gptkit.runs import run as run_config, run_folder

    config = load_config(experiment, overrides)
    argv = ctx.obj.get("argv", ["run", experiment, *overrides])
    if nproc is not None:
        check_launch(config, nproc)
        os.environ[LAUNCH_COMMAND] = json.dumps(["gptkit", *argv])
        sys.exit(distributed.launch(nproc, without_nproc(argv)))
    # The command line as given, global options included: config.toml records it, the resume hint repeats it.
    command = json.loads(os.environ[LAUNCH_COMMAND]) if LAUNCH_COMMAND in os.environ else ["gptkit", *argv]
    run_config(attrs.evolve(config, provenance={**config.provenance, "command": command}))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone
        click.echo(done_line(config, run_folder(config)), err=True)


def done_line(config: Config, folder: Path) -> str:
    """Where the run's folder is, and what to do with it next."""
    shown = shlex.quote(str(folder))
    if config.run.recipe == "evaluate":
        return f"run folder: {shown} (eval.json)"
    nexts = [f"gptkit generate {shown} --prompt TEXT"]
    if config.data.prompt is not None:
        nexts.append(f"gptkit chat {shown}")
    nexts.append(f"gptkit eval {shown} --text FILE")
    return f"run folder: {shown}; next: " + " | ".join(nexts)


def check_launch(config, nproc: int) -> None:
    """What can be told before starting `nproc` processes: the batch split, the strategy, the GPUs."""
    import torch

    from gptkit import distributed
    from gptkit.runs import resolve_device

    if distributed.Processes.from_env().launched:
        raise GptkitError("--nproc: this process was itself started by torchrun; leave --nproc out")
    distributed.check_batch(config.train.batch_size, config.train.grad_accum, nproc)
    distributed.resolve_strategy(config.train.strategy, distributed.Processes(world_size=nproc, launched=True))
    if resolve_device(config.run.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise GptkitError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); start at most one process per GPU")


def without_nproc(argv: list[str]) -> list[str]:
    """The command line arguments less `--nproc N` (or `--nproc=N`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept
