"""The README's first command, run for real: `gptkit run experiments/quickstart.toml` trains a small
GPT from scratch on the synthetic tasks and must reach the accuracy it promises on held-out inputs
(60% overall; reverse, uppercase and sort at least 50% each; addition is reported). Its time is
measured in the closing notes, never asserted here (the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # a real run of minutes: `python -m pytest -m slow` (CI runs it)


def test_quickstart_reaches_its_accuracy_floors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gptkit", "run", str(ROOT / "experiments" / "quickstart.toml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "quickstart"
    scores = json.loads((run / "scores.json").read_text(encoding="utf-8"))["exact-match"]
    groups = {name: group["mean"] for name, group in scores["groups"].items()}
    assert set(groups) == {"reverse", "uppercase", "sort", "add"}
    assert scores["mean"] >= 0.60, scores
    for family in ("reverse", "uppercase", "sort"):
        assert groups[family] >= 0.50, (family, scores)
    assert "exact-match:" in result.stdout and "uppercase" in result.stdout  # printed per family and overall
    for name in ("config.toml", "metrics.jsonl", "loss.png", "samples.txt", "responses.json"):
        assert (run / name).is_file(), name
