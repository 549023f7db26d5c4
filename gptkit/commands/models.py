"""`gptkit download NAME` and `gptkit export SOURCE DIR`: pretrained weights in, model folders out."""

from __future__ import annotations

from pathlib import Path

import click

from gptkit.commands import Command

from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.plugins import registry


DOWNLOAD_LOADERS = {"openai": "openai-tf", "hf": "hf"}  # --source -> checkpoint loader


@click.command(cls=Command)
@click.argument("name")
@click.option("--source", type=click.Choice(sorted(DOWNLOAD_LOADERS)), default="openai", show_default=True,
              help="OpenAI's TensorFlow checkpoints or the Hugging Face hub.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Download folder (default: the cache).")
def download(name: str, source: str, directory: str | None) -> None:
    """Download pretrained weights NAME (gpt2-124M ... gpt2-1558M, an alias, or a hub id); print the folder."""
    loader = registry.checkpoint.build(Component(DOWNLOAD_LOADERS[source], {"dir": directory}), Context())
    click.echo(loader.download(name))


@click.command(cls=Command)
@click.argument("source")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="hf", show_default=True,
              help="A checkpoint loader that writes its format: hf (transformers' GPT2LMHeadModel) or gptkit.")
def export(source: str, directory: str, fmt: str) -> None:
    """Write the model SOURCE (run folder, model folder or name) into the new folder DIRECTORY."""
    writer = registry.checkpoint.build(Component(fmt), Context())
    if not hasattr(writer, "save"):
        writers = [n for n in registry.checkpoint.names() if hasattr(registry.checkpoint.get(n).factory, "save")]
        raise GptkitError(f"--format {fmt}: that checkpoint loader cannot write its format (formats: {', '.join(writers)})")
    from gptkit.sources import load_source

    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise GptkitError(f"{target}: exists and is not an empty folder; export writes a new folder")
    click.echo(writer.save(load_source(source), target))
