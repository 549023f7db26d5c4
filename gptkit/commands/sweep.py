"""`gptkit sweep SWEEP_FILE`: a W&B sweep over an experiment, online or offline (see gptkit.sweep)."""

from __future__ import annotations

import click

from gptkit.commands import Command

from gptkit.errors import GptkitError


@click.command(cls=Command)
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--count", type=int, help="Trials in all (offline; default: the whole grid, or run_cap); online, the trials of this agent.")
@click.option("--offline", is_flag=True, help="Search locally even with W&B credentials (also: WANDB_MODE=offline, or none present).")
@click.option("--resume", is_flag=True, help="Continue an interrupted offline sweep (running the same command again does too).")
def sweep(sweep_file: str, count: int | None, offline: bool, resume: bool) -> None:
    """Run the W&B sweep SWEEP_FILE (W&B's sweep format, YAML or TOML) over its `program` experiment:
    a W&B sweep when W&B is online, else the same search locally, in runs/<sweep>/ (see gptkit.sweep)."""
    if count is not None and count < 1:
        raise GptkitError(f"--count: must be >= 1, got {count}")
    from gptkit.sweep import is_offline, load_sweep, run_offline, run_online

    checked = load_sweep(sweep_file)
    if is_offline(offline):
        run_offline(checked, count, resume, log=click.echo)
    elif resume:
        raise GptkitError("--resume continues offline sweeps; an online sweep goes on with: wandb agent SWEEP_ID")
    else:
        click.echo(f"W&B sweep {run_online(checked, count)} done")
