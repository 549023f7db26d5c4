"""`gptkit experiments [copy NAME [DEST]]`: the experiments and sweeps shipped with gptkit."""

from __future__ import annotations

import itertools

import click

from gptkit.commands import Command, CommandGroup


@click.group(cls=CommandGroup, invoke_without_command=True)
@click.pass_context
def experiments(ctx: click.Context) -> None:
    """The experiments and sweeps shipped with gptkit, with what each does; `copy` writes one out to edit."""
    from gptkit import shipped

    if ctx.invoked_subcommand is None:
        files = shipped.shipped()
        width = max(len(s.name) for s in files)
        for kind, items in itertools.groupby(files, key=lambda s: s.kind):
            click.echo(f"{kind}:")
            for s in items:
                click.echo(f"  {s.name:<{width}}  {s.description}")


@experiments.command("copy", cls=Command)
@click.argument("name")
@click.argument("dest", required=False)
def experiments_copy(name: str, dest: str | None) -> None:
    """Write the shipped experiment or sweep NAME to DEST (a file, or a folder; default: here), with
    the data files it names, so that it runs from there. Overwrites nothing."""
    from gptkit import shipped

    for path in shipped.copy(name, dest):
        click.echo(f"wrote {path}")
