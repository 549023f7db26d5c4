"""`gptkit config show|validate EXPERIMENT.toml [KEY=VALUE ...]`."""

from __future__ import annotations

import sys

import click

from gptkit.commands import CommandGroup

from gptkit.config import load_config, show_toml
from gptkit.errors import GptkitError


@click.group(cls=CommandGroup)
def config() -> None:
    """Show or check an experiment's resolved config."""


@config.command("show")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def config_show(experiment: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved config as TOML; keys left unset are shown commented, with what unset means."""
    click.echo(show_toml(load_config(experiment, overrides)), nl=False)


@config.command("validate")
@click.argument("experiments", nargs=-1, required=True)
@click.option("-o", "--override", "overrides", multiple=True, help="KEY=VALUE applied to every experiment.")
def config_validate(experiments: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check structure, types and component names (not whether files or URLs exist).

    EXPERIMENTS are TOML files (*.toml), optionally followed by KEY=VALUE overrides for all of them.
    """
    files = [e for e in experiments if e.endswith(".toml") and "=" not in e and not e.startswith("~")]
    extra = [e for e in experiments if e not in files] + list(overrides)
    failed = False
    for path in files:
        try:
            load_config(path, extra)
        except GptkitError as exc:
            failed = True
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(f"{path}: ok")
    if failed:
        sys.exit(2)
