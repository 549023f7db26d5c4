"""Errors a user can act on. The CLI prints their message on one line and exits 2; anything else is a bug."""

from __future__ import annotations


class GptkitError(Exception):
    """An error caused by input (a config, a file, a name), not by gptkit itself."""

    exit_code = 2


class ConfigError(GptkitError):
    """Every problem found in a config, one line each with its dotted path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{head}{len(problems)} config {noun}:\n" + "\n".join(f"  {p}" for p in problems))


class RegistryError(GptkitError):
    """A name registered twice, or looked up but not registered."""
