"""A short soak (benchmarks/soak_kill_resume.py has the long one): SIGKILL a training run at random
moments, resume it with run.resume=auto, and finish bit for bit where a run never stopped does, with
no litter left and no metrics row lost or duplicated."""

from __future__ import annotations

import random
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import soak_kill_resume as soak  # noqa: E402

pytestmark = pytest.mark.slow  # a real run of minutes: `python -m pytest -m slow` (CI runs it)


def test_random_sigkills_then_resume_finish_where_an_uninterrupted_run_does(tmp_path):
    reference = soak.reference_run(tmp_path / "reference")
    figures = soak.trial(tmp_path / "killed", kills=3, rng=random.Random(7), reference=reference)
    assert figures["kills"] >= 1, figures
    assert figures["identical"] and figures["litter_left"] == 0 and figures["bad_rows"] == 0, figures
