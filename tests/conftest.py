"""Shared fixtures. Tests run offline; the GPT-2 vocabulary and data come from ../shared/data when present."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# ../shared/data beside the checkout (CI, the main worktree), or further up (a git worktree in a subfolder).
SHARED_DATA = next(
    (p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data" / "gpt2" / "vocab.bpe").is_file()),
    ROOT.parent / "shared" / "data",
)
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))


def gpt2_vocab_dir() -> Path | None:
    folder = SHARED_DATA / "gpt2"
    return folder if (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file() else None


@pytest.fixture
def gpt2_vocab() -> Path:
    folder = gpt2_vocab_dir()
    if folder is None:
        pytest.skip(f"GPT-2 vocabulary files not found in {SHARED_DATA / 'gpt2'}")
    return folder


@pytest.fixture
def ch07():
    """The original book code's ch07 (instruction fine-tuning), the reference for instruction data."""
    return pytest.importorskip("llms_from_scratch.ch07", reason="llms-from-scratch is not installed (pip install --no-deps llms-from-scratch psutil)")


@pytest.fixture
def tiny_model_config():
    from gptkit.model import GPTConfig

    return GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2)


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1: (base URL, the folder it serves, the paths requested)."""
    served = tmp_path / "www"
    served.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", served, requests
    server.shutdown()


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """No network, no credentials, and W&B's own folders (cache, config, staging) in tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    """Each test runs in its own working directory so runs/ never lands in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    yield
