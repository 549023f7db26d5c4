"""CI: the README's first two commands as a newcomer types them, in a fresh virtual environment.

The install line and the test command are read from the README's first bash block and run as
written in a new venv (nothing of this machine's environment shared), in a fresh clone of the
repository (its committed state, as CI checks it). Then, in that venv: the README's offline sweep, one trial (`gptkit sweep` must work
from the README's install alone), and numpy must still be 2 or later (W&B's sweep engine pins
numpy<2 in its metadata). Exits non-zero naming the step that failed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The commands of the README's first bash block, comments dropped (as tests/test_readme.py reads them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", text, flags=re.M | re.S).group(1)
    lines = [re.sub(r"\s{2,}#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def step(name: str, command: str, cwd: Path, env: dict[str, str]) -> None:
    print(f"\n=== {name}: {command}", flush=True)
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=cwd, env=env)
    if result.returncode != 0:
        sys.exit(f"fresh install: {name} failed (exit {result.returncode}): {command}")


def main() -> None:
    install, test = readme_commands()[:2]
    assert "pip install" in install and "pytest" in test, (install, test)
    scratch = Path(tempfile.mkdtemp(prefix="gptkit-fresh-"))
    try:
        repo = scratch / "gptkit"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
        shared = ROOT.parent / "shared"
        if shared.is_dir():  # the tests find ../shared beside the checkout, as in CI
            (scratch / "shared").symlink_to(shared)
        venv = scratch / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env |= {"VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        step("the README's install line", install, repo, env)
        step("the README's test command", test, repo, env)
        step("the README's sweep, one trial", "gptkit sweep sweeps/quickstart_lr.yaml --offline --count 1", repo, env)
        step("numpy 2", "python -c \"import numpy; assert int(numpy.__version__.split('.')[0]) >= 2, numpy.__version__\"", repo, env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nfresh install: the README's install line, test command and sweep work in a new venv")


if __name__ == "__main__":
    main()
