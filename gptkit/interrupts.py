"""Ctrl-C while gptkit starts: noted, and acted on once the imports are done.

A KeyboardInterrupt raised inside an import can be swallowed by C code (torch clears the error when
NumPy's import fails under it), which leaves half-imported modules behind and a process that goes
on broken. So while the command line and the plugins import, SIGINT only sets a flag, and the
process then ends with `interrupted` and exit 130, as at any other moment: never a traceback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block SIGINT is noted instead of raised; after it, a noted one exits 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
