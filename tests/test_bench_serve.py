"""benchmarks/bench_serve.py --smoke: the serving benchmark's every step (the real `gptkit serve` in
its own process, clients one at a time and concurrent, each answer checked against its own greedy
completion) with a tiny model, so that the script works as is. Figures are not checked."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_serve_smoke():
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--smoke", "--threads", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("| one at a time | 32 |") for line in lines), result.stdout
    assert any(line.startswith("| 4 concurrent | 32 |") for line in lines), result.stdout
    assert "every answer equals its own greedy completion" in lines[-1]
