"""The `gptkit` command line. Input errors print one line on stderr and exit 2; `--debug` shows tracebacks.
A run stopped by Ctrl-C or SIGTERM after saving its checkpoint exits 130 or 143 (128 + the signal);
Ctrl-C at any other moment prints `interrupted` and exits 130, never a traceback.

The commands live in gptkit.commands, one module each, and import what they run when they run, so
`gptkit --version`, `--help` and shell completion start without torch or any plugin. Plugins add
commands through the `register_commands` hook, called when a command name is not gptkit's own or
when every command is listed.

Shell completion (click): `eval "$(_GPTKIT_COMPLETE=bash_source gptkit)"` (zsh_source, fish_source).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import click

from gptkit import plugins
from gptkit.commands import chat, components, config, evaluate, experiments, generate, models, run, serve, sweep
from gptkit.errors import GptkitError, GptkitWarning, RunInterrupted
from gptkit.interrupts import interrupts_deferred
from gptkit.version import __version__


class GptkitGroup(click.Group):
    """gptkit's commands and the plugins' (added when needed, see the module doc); gptkit's errors
    become clear messages and exit codes instead of tracebacks."""

    plugin_commands_added = False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands:
            self.add_plugin_commands()
        return self.commands.get(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_plugin_commands()
        return sorted(self.commands)

    def add_plugin_commands(self) -> None:
        """Let the plugins add their commands (the `register_commands` hook), once, when a command
        is not gptkit's own or every command is listed: gptkit's own need no plugin loaded."""
        if not self.plugin_commands_added:
            self.plugin_commands_added = True
            with interrupts_deferred():
                plugins.hook().register_commands(cli=self)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            if os.environ.get("RANK", "0") == "0":  # torchrun's rank: every rank stopped at the same step; one says so
                click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
        except GptkitError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=GptkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gptkit")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """gptkit: pretrain, load, generate with and fine-tune GPT-2 models, built from plugins."""
    ctx.ensure_object(dict)["debug"] = debug


for command in (run.run, components.list_components, components.plugins, config.config, sweep.sweep, experiments.experiments,
                models.download, models.export, generate.generate, chat.chat, serve.serve, evaluate.eval_command):
    cli.add_command(command)



def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """gptkit's own warnings as one `warning: ...` line (no internal file and line); others as Python shows them."""
    if issubclass(category, GptkitWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """The console script: click's own usage errors get gptkit's `error:` prefix too, and Ctrl-C
    while a command's modules load is as quiet as at any other moment (see gptkit.interrupts)."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        warnings.showwarning = _show_warning
        code = cli.main(args=argv, prog_name="gptkit", standalone_mode=False, obj={"argv": argv})
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.", err=True)
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
