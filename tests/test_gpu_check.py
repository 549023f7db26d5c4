"""benchmarks/gpu_check.py --smoke: every code path of the GPU check, on CPU with tiny sizes, so that
the script works as is whenever a device is lent. Figures are not checked (they mean nothing here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a real run of minutes: `python -m pytest -m slow` (CI runs it)

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_runs_every_part(tmp_path, gpt2_vocab):
    pytest.importorskip("llms_from_scratch")
    pytest.importorskip("transformers")
    out = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    assert "FAILED" not in table and "skipped" not in table, table
    for part in ("decode 124M bf16 b1", "decode 124M bf16 b8", "train 124M", "instruct tiny", "finetune XL memory"):
        assert f"| {part} |" in table
    for row in ("growing cache", "static cache", "HF generate", "torch.compile", "GPTModelFast + compile", "HF GPT-2 + compile",
                "activations kept", "activation checkpointing",
                "gptkit + compile", "training.fit", "original ch07"):
        assert row in table, row
