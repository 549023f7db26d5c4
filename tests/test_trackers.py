"""Trackers on the training hooks: the `wandb` tracker read back with W&B's own reader (`wandb leet
inspect`, which fails on anything that is not a W&B transaction log), resumed and failed runs, and the
hooks as the `jsonl-mirror` tracker records them. Offline, with no credentials and W&B's own
folders in tmp."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import gptkit
from conftest import ROOT
from gptkit.config import load_config
from gptkit.errors import GptkitError, RunInterrupted
from gptkit.runs import setup_run
from gptkit.testing import TINY_PRETRAIN, tiny_text

pytest.importorskip("wandb")

# gptkit.testing's tiny pretraining experiment, smaller still (a trial takes about a second), as a file
# with its text beside it: about 20 steps an epoch.
SMALLER = {"context_length = 32": "context_length = 16", "n_layers = 2": "n_layers = 1", 'device = "cpu"\n': 'device = "cpu"\nthreads = 1\n',
           'dataset = { name = "text", path = "text.txt" }': 'dataset = { name = "text", path = "text.txt", max_length = 16, stride = 16 }'}
TINY = functools.reduce(lambda text, change: text.replace(*change), SMALLER.items(), TINY_PRETRAIN) + """
[track]
trackers = [{ name = "wandb", mode = "offline" }, { name = "jsonl-mirror" }]
"""

pytestmark = pytest.mark.usefixtures("wandb_offline")


def tiny_experiment(folder: Path) -> Path:
    """The tiny pretraining experiment written into `folder`."""
    (folder / "text.txt").write_text(tiny_text(), encoding="utf-8")
    path = folder / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


def wandb_files(run_dir: Path) -> list[Path]:
    """The run's .wandb transaction logs, oldest first."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)


def inspect(path: Path, summary: bool = False):
    """W&B's own reader: the records of a .wandb file (or its summary object)."""
    args = [sys.executable, "-m", "wandb", "leet", "inspect", *(["--summary"] if summary else []), "--json", str(path)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.strip()]


def history(path: Path) -> list[dict]:
    return [r["history"]["item"] for r in inspect(path) if r["type"] == "history"]


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def events(run_dir: Path) -> list[str]:
    return [json.loads(line)["hook"] for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_offline_run_holds_every_metrics_row_samples_plot_and_summary(tmp_path):
    trackers = "track.trackers=[{name = 'wandb', mode = 'offline', log_checkpoints = true}, {name = 'jsonl-mirror'}]"
    gptkit.run(load_config(tiny_experiment(tmp_path), ["train.max_steps=5", trackers]))
    run_dir = tmp_path / "runs" / "tiny"
    (log,) = wandb_files(run_dir)
    artifacts = [r["artifact"] for r in inspect(log) if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert [sorted(a["aliases"]) for a in artifacts] == [["latest", "step-5"]]
    logged = history(log)
    rows = metrics_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    by_step = {item["_step"]: item for item in logged}
    for row in rows:  # every key of every row, at its step, as W&B stored it
        assert {k: by_step[row["step"]][k] for k in row} == pytest.approx(row)
    assert by_step[5]["samples._type"] == "table-file" and by_step[5]["loss_plot._type"] == "image-file"
    summary = inspect(log, summary=True)
    assert summary["state"] == "finished" and summary["run_id"] == (run_dir / "wandb" / "run-id").read_text().strip()
    assert summary["summary"]["best_val_loss"] == min(r["val_loss"] for r in rows if "val_loss" in r)
    assert summary["summary"]["step"] == 5 and summary["config"]["train.lr"] == 3e-3 and summary["config"]["model.attention.name"] == "causal"
    assert events(run_dir) == ["on_train_start", *["on_step_end"] * 5, "on_sample", "on_checkpoint", "on_train_end", "on_run_end"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "text.txt", "tiny.toml", "wandb-home"]  # nothing else written


def test_a_run_resumed_after_ctrl_c_continues_the_same_wandb_run_with_no_step_twice(tmp_path, monkeypatch):
    from gptkit import training

    real = training.train_step

    def step_then_sigint(run, parts, examples, lr):
        result = real(run, parts, examples, lr)
        if run.step == 2 and run.config.train.max_steps == 6:  # the third step of the first start
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(training, "train_step", step_then_sigint)
    experiment = tiny_experiment(tmp_path)
    with pytest.raises(RunInterrupted):
        gptkit.run(load_config(experiment, ["train.max_steps=6"]))
    monkeypatch.setattr(training, "train_step", real)
    gptkit.run(load_config(experiment, ["train.max_steps=6", "run.resume=auto", "run.resume_changes=allow"]))
    run_dir = tmp_path / "runs" / "tiny"
    first, second = wandb_files(run_dir)
    cut, resumed = inspect(first, summary=True), inspect(second, summary=True)
    assert cut["run_id"] == resumed["run_id"]
    assert (cut["state"], cut["exit_code"]) == ("failed", 130)  # 128 + SIGINT, the process's exit code
    assert cut["summary"]["error"].startswith("RunInterrupted: interrupted at step 3")
    assert resumed["state"] == "finished"
    steps = [item["_step"] for item in history(first)] + [item["_step"] for item in history(second)]
    assert steps == [1, 2, 3, 4, 5, 6]  # the second file starts after the checkpoint's step
    assert steps == [r["step"] for r in metrics_rows(run_dir)]


def test_a_nan_loss_finishes_the_wandb_run_as_failed(tmp_path, monkeypatch):
    from gptkit import training

    real = training.summed_lm_loss
    calls = []

    def poisoned(logits, targets, ignore_index):
        calls.append(1)
        loss = real(logits, targets, ignore_index)
        return loss * math.nan if len(calls) >= 4 else loss

    monkeypatch.setattr(training, "summed_lm_loss", poisoned)
    with pytest.raises(GptkitError, match="training loss is nan"):
        gptkit.run(load_config(tiny_experiment(tmp_path), ["train.max_steps=5", "train.eval_every=0"]))
    run_dir = tmp_path / "runs" / "tiny"
    summary = inspect(wandb_files(run_dir)[0], summary=True)
    assert summary["state"] == "failed" and summary["exit_code"] == 2  # the exit code gptkit gives a GptkitError
    assert "training loss is nan at step 4" in summary["summary"]["error"]
    assert events(run_dir)[-2:] == ["on_train_error", "on_run_end"]


def test_trackers_are_built_by_the_main_process_only(tmp_path):
    config = load_config(tiny_experiment(tmp_path), ["track.trackers=[{name = 'jsonl-mirror'}]"])
    worker = setup_run(config)
    worker.rank = 1
    worker.track()
    assert worker.trackers == []
    main = setup_run(config)
    main.track()
    try:
        assert [type(t).__name__ for t in main.trackers] == ["JsonlMirror"]
    finally:
        main.close()
    assert main.trackers == []


def test_the_instruct_recipes_scores_reach_the_wandb_summary(tmp_path):
    """on_run_end: the recipe's final metrics (the scorers' means) end up in the W&B run's summary."""
    quick = ["train.max_steps=2", "train.batch_size=8", "data.dataset.count=200", "eval.max_new_tokens=2", "model.n_layers=1",
             "run.threads=1", "track.trackers=[{name = 'wandb', mode = 'offline'}]"]
    metrics = gptkit.run(load_config(ROOT / "experiments" / "quickstart.toml", quick))
    summary = inspect(wandb_files(tmp_path / "runs" / "quickstart")[0], summary=True)
    assert summary["state"] == "finished" and summary["summary"]["exact_match"] == metrics["exact_match"]
