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


class WriteError(GptkitError):
    """A file of gptkit's could not be written; the message names it and says why in plain words."""

    def __init__(self, path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: cannot write: {reason}")


class CorruptCheckpoint(GptkitError):
    """A saved model or checkpoint whose files are missing, truncated or do not match their checksums."""


class RunInterrupted(Exception):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint, as `gptkit.run()` raises it.

    Not a GptkitError: the run did nothing wrong and can go on. `checkpoint` is the saved folder,
    `step` its step, `signal` the signal's number, `metrics` the last metrics row, `resume_command`
    the command line that continues the run; the CLI exits with 128 + the signal's number (130, 143).
    """

    def __init__(self, *, checkpoint, step: int, signal: int, metrics: dict, resume_command: str):
        self.checkpoint = checkpoint
        self.step = step
        self.signal = signal
        self.metrics = metrics
        self.resume_command = resume_command
        self.exit_code = 128 + signal
        super().__init__(f"interrupted at step {step}; checkpoint saved to {checkpoint}\nresume with: {resume_command}")


class GptkitWarning(UserWarning):
    """Something the user should know that does not stop gptkit; the CLI prints it as `warning: ...`."""
