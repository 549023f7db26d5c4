"""The README's commands, run as written, in its order, in a scratch copy of the repository's
experiments (with ../shared beside it as in CI).

Every line of a ```bash block and every ```python block runs, except the exemptions below, each
with its reason. Long runs get the listed overrides appended. OpenAI's weights come from a
127.0.0.1 server that serves a small checkpoint in OpenAI's layout under every size's name.
A bash line ending in ` &` starts a server (`gptkit serve ... --port N &`): it runs in the
background, the next step waits until its /health answers on port N, and it is stopped after the
README's last step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA
from gpt2_fixtures import SHARED_GPT2, FileServer, random_hf_model, write_openai_folder
from plugin_packages import install

pytestmark = pytest.mark.slow  # a real run of minutes: `python -m pytest -m slow` (CI runs it)

# A bash line containing the key is not run, for the reason given.
EXEMPT = {
    "pip install": "installs packages (CI's install step installs gptkit; the workspace, the example plugin)",
    "python -m pytest": "runs this very test-suite",
    "--source hf": "needs the Hugging Face hub (no network here)",
    "openai-community/": "needs the Hugging Face hub (no network here)",
    "python benchmarks/": "benchmarks take minutes; never asserted in tests",
    "zsh_source": "a zsh line (the test shell is bash)",
    "fish_source": "a fish line (the test shell is bash)",
    "wandb agent": "joins an online W&B sweep (needs W&B's server)",
    "--nnodes 2": "needs two machines",
}
# A bash line that is exactly the key is not run, for the reason given.
EXEMPT_LINES = {
    "gptkit run experiments/instruct_medium.toml": "downloads the records from GitHub (no network here); the next line runs the same job on the shipped copy",
    "gptkit sweep sweeps/quickstart_lr.yaml": "an online W&B sweep (needs W&B's server); the same sweep runs offline above",
}
# A bash line containing the key runs with these overrides appended (long runs, made short; the
# quickstart's full run and its accuracy are tests/test_quickstart.py's).
SHORTENED = {
    "experiments/quickstart.toml": ["train.max_steps=4", "eval.max_new_tokens=4"],
    "experiments/instruct_medium.toml": ["train.max_steps=2", "eval.max_new_tokens=4"],
    "experiments/instruct_test.toml": ["train.max_steps=2"],
    "experiments/tiny_pretrain.toml": ["train.max_steps=4"],  # also under --nproc 2 and torchrun
    "experiments/pretrain_verdict.toml": ["train.max_steps=1", "train.eval_batches=1", "model.n_layers=1"],
    "sweeps/quickstart_lr.yaml --offline": ["--count", "1"],
}
# A python block line containing the key is left out, for the reason given.
EXEMPT_PYTHON = {
    'load_model("openai-community/gpt2")': "needs the Hugging Face hub (no network here)",
}


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of README.md, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)]


def bash_lines(block: str) -> list[str]:
    lines = []
    for line in block.splitlines():
        command = re.sub(r"\s{2,}#.*$", "", line).strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def steps() -> list[tuple[str, str]]:
    """("bash" | "background" | "python" | "skip", text) in README order."""
    out = []
    for language, block in readme_blocks():
        if language == "bash":
            for command in bash_lines(block):
                reason = EXEMPT_LINES.get(command) or next((why for key, why in EXEMPT.items() if key in command), None)
                if reason:
                    out.append(("skip", f"{command}  ({reason})"))
                    continue
                extra = next((args for key, args in SHORTENED.items() if key in command), [])
                if command.endswith(" &"):
                    out.append(("background", command.removesuffix(" &")))
                else:
                    out.append(("bash", " ".join([command, *extra])))
        elif language == "python":
            kept = [line for line in block.splitlines() if not any(key in line for key in EXEMPT_PYTHON)]
            out.append(("python", "\n".join(kept)))
    return out


def test_every_exemption_is_used():
    """An exemption that no README line needs any more must go (so the list stays honest)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    unused = [key for key in [*EXEMPT, *EXEMPT_LINES, *SHORTENED, *EXEMPT_PYTHON] if key not in text]
    assert unused == []


@pytest.fixture
def workspace(tmp_path):
    """repo/ with the experiments, shared/ beside it (a link to ../shared), an empty cache, and the
    example plugin installed as the README's `pip install ./examples/acme-window-attention` does."""
    if not SHARED_GPT2.is_dir():
        pytest.skip(f"GPT-2 vocabulary files not found in {SHARED_GPT2}")
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "experiments", repo / "experiments")
    shutil.copytree(ROOT / "sweeps", repo / "sweeps")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    model = random_hf_model(50257, 1024, 16, 2, 1, seed=5)  # context 1024: instruct_medium answers after long prompts
    checkpoint = write_openai_folder(model, tmp_path / "openai", real_vocab=True, writer="python")
    files = {f"/{size}/{p.name}": p.read_bytes() for size in ("124M", "355M", "774M", "1558M") for p in checkpoint.iterdir() if p.is_file()}
    example_site = install(ROOT / "examples" / "acme-window-attention", tmp_path / "acme-window")
    with FileServer(files) as server:
        env = {**os.environ, "GPTKIT_CACHE": str(tmp_path / "cache"), "GPTKIT_OPENAI_BASE_URL": server.url, "TQDM_DISABLE": "1",
               "WANDB_MODE": "offline", **{var: str(tmp_path / "wandb-home") for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")},
               "PYTHONPATH": str(example_site),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        yield repo, env


def start_server(command: str, repo: Path, env: dict) -> subprocess.Popen:
    """`command` running in the background, once its /health answers on its --port."""
    import httpx

    port = int(re.search(r"--port (\d+)", command).group(1))
    log = open(repo / f"server-{port}.log", "w+")
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.seek(0)
            pytest.fail(f"README server did not come up:\n{command}\n--- output\n{log.read()[-3000:]}")
        time.sleep(0.2)


def test_readme_commands_run_as_written(workspace):
    repo, env = workspace
    ran, servers = 0, []
    try:
        ran = run_steps(repo, env, servers)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=60)
    assert ran >= 15


def run_steps(repo: Path, env: dict, servers: list) -> int:
    ran = 0
    for kind, text in steps():
        if kind == "skip":
            continue
        if kind == "background":
            servers.append(start_server(text, repo, env))
            continue
        if kind == "bash":
            result = subprocess.run(["bash", "-c", f"set -o pipefail; {text}"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        else:
            result = subprocess.run([sys.executable, "-c", text], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"README {kind} failed:\n{text}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        ran += 1
    return ran
