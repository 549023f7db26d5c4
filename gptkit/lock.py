"""The run-folder lock: one process at a time writes a run folder.

Two runs writing one folder (two seeds started by mistake with the same out_dir) would leave one run's
metrics and config beside the other's weights. The writer holds an exclusive `flock` on `<run>/.lock`
for the run's life; the lock file names the holder (PID, host, start time) for the refusal message.
The OS releases a flock when its process ends, however it ends, so a lock is never stale. Readers
(`gptkit generate`, `gptkit eval`) take no lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from gptkit.errors import GptkitError
from gptkit.files import writing

LOCK = ".lock"


class FolderLock:
    """An exclusive lock on `folder` (created if missing), taken by `acquire`, held until `release`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.file = None

    @property
    def held(self) -> bool:
        return self.file is not None

    def acquire(self) -> None:
        """Take the lock, or raise GptkitError naming the process that holds it."""
        with writing(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read()
            f.close()
            raise GptkitError(f"{self.folder} is in use by another run ({describe_holder(holder)}); "
                              "wait for it to end, or give this run another run.out_dir") from None
        except BaseException:
            f.close()
            raise
        self.file = f
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            with writing(self.path):
                f.truncate(0)
                f.write(json.dumps(holder) + "\n")
                f.flush()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the file releases the flock
            self.file = None


def describe_holder(text: str) -> str:
    """'PID 123 on host h, since ...' from the lock file's contents (empty while the holder starts)."""
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is starting"
