"""gptkit's commands, one module each (or a few that belong together), gathered by gptkit.cli.

A command module imports only what declaring its command needs (click, the config): the modules it
runs (torch, models, the engine) are imported inside the command's function, when it runs. So
`gptkit --version`, `--help`, `gptkit run --help` and shell completion load neither torch nor any
plugin (tests/test_structure.py checks it). Here: the options and input several commands share.
"""

from __future__ import annotations

import sys

import click

from gptkit.errors import GptkitError
from gptkit.interrupts import interrupts_deferred


class Command(click.Command):
    """A gptkit command. torch is imported when the command runs, with Ctrl-C deferred while it
    imports (gptkit.interrupts: C code in torch's import can swallow a KeyboardInterrupt)."""

    def invoke(self, ctx: click.Context):
        with interrupts_deferred():
            import torch  # noqa: F401

        return super().invoke(ctx)


class CommandGroup(click.Group):
    """A group of gptkit commands (`gptkit config ...`)."""

    command_class = Command


def sampling_options(command):
    """--sampler, --temperature, --top-k, --top-p, --seed: how `generate` and `chat` pick tokens."""
    options = [
        click.option("--sampler", help="A registered sampler. Default: greedy, or top-k / top-p when their options are given."),
        click.option("--temperature", type=float),
        click.option("--top-k", type=int),
        click.option("--top-p", type=float),
        click.option("--seed", type=int, help="Seed of the sampler's random generator: the same seed gives the same text."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def use_device(name: str, threads: int | None):
    """The torch device `--device` names, with torch's intra-op threads set to `--threads`."""
    import torch

    from gptkit.runs import resolve_device

    if threads:
        torch.set_num_threads(threads)
    return resolve_device(name)


def device_options(command):
    """--device and --threads, for the commands that run a model."""
    command = click.option("--threads", type=click.IntRange(min=1), help="torch's intra-op threads (default: torch's own choice).")(command)
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")(command)


def stdin_prompt() -> str:
    """All of stdin as one prompt, less the newline that ends it."""
    if sys.stdin.isatty():
        raise GptkitError("no prompt: give --prompt TEXT or pipe text on stdin")
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text
