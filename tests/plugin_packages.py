"""Plugin packages as users get them: built and pip-installed into a folder of their own (no network,
no change to this environment), then used from a subprocess that has that folder on PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def install(src: Path, tmp: Path) -> Path:
    """pip-install the package in `src` into tmp/site and return that folder. It is built from a copy
    (tmp/src) without build/ or egg-info: building in `src` would leave those there, and reuse them."""
    copy, site = tmp / "src", tmp / "site"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(copy)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def python(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`python ARGS` with the installed package importable; `env` adds environment variables. Torch
    gets one thread: tests run tiny models, and on a busy machine waiting for a second thread makes
    them up to 100x slower."""
    environ = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environ, timeout=300)


def gptkit(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`gptkit ARGS` seeing the installed package's plugins."""
    return python(site, "-m", "gptkit", *args, **env)
