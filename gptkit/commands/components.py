"""`gptkit list [KIND]` and `gptkit plugins`: what the plugins registered, and the plugins themselves."""

from __future__ import annotations

import click

from gptkit.commands import Command

from gptkit import plugins as plugin_manager
from gptkit.component_help import describe
from gptkit.plugins import registry
from gptkit.tables import aligned


@click.command("list", cls=Command)
@click.argument("kind", required=False)
@click.argument("name", required=False)
def list_components(kind: str | None, name: str | None) -> None:
    """Registered components (of KIND, or of every kind), with origin and doc; with NAME, that
    component's parameters: type, default, bounds and doc."""
    if name is not None:
        click.echo(describe(registry[kind].get(name)))
        return
    registries = [registry[kind]] if kind else list(registry)
    for i, reg in enumerate(registries):
        if i:
            click.echo()
        click.echo(f"{reg.kind}:")
        entries = reg.entries()
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            click.echo(f"  {e.name:<{width}}  {e.doc}  [{e.origin}]")
        if not entries:
            click.echo("  (none registered)")


@click.command(cls=Command)
def plugins() -> None:
    """Loaded plugins: entry point, distribution, version, hooks."""
    rows = [[info.name, info.distribution, info.version, "(built-in)" if info.builtin else "(third-party)",
             f"FAILED: {info.error}" if info.error else ", ".join(info.hooks) or "(no hooks)"] for info in plugin_manager.loaded()]
    for line in aligned(rows):
        click.echo(line)
