"""`gptkit sweep` offline: W&B sweep files searched locally on the `sweeps` engine, each trial an
offline W&B run read back with W&B's own reader; resume after SIGKILL; bad sweep files refused
before any trial; and the online path's hand-over to wandb.sweep / wandb.agent."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgba

from conftest import ROOT
from gptkit import plotting
from gptkit.cli import cli
from gptkit.config import load_config
from gptkit.plotting import SweptParameter, trials_figure
from gptkit.sweep import swept_parameters
from test_trackers import history, inspect, tiny_experiment, wandb_files

pytest.importorskip("sweeps")
pytestmark = pytest.mark.usefixtures("wandb_offline")

GRID = """
program: tiny.toml
method: grid
metric: {name: val_loss, goal: minimize}
parameters:
  train.lr: {values: [0.001, 0.003]}
  model.n_layers: {values: [1, 2]}
  train.max_steps: {value: 4}
"""


def write(folder: Path, name: str, text: str) -> Path:
    tiny_experiment(folder)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def sweep(*args: str):
    result = CliRunner().invoke(cli, ["sweep", *args], catch_exceptions=False)
    return result.exit_code, result.output


def state(folder: Path) -> list[dict]:
    return json.loads((folder / "sweep.json").read_text())["trials"]


@pytest.mark.slow
def test_a_2x2_grid_runs_4_distinct_trials_with_wandb_runs_a_table_and_the_best_config(tmp_path):
    code, out = sweep(str(write(tmp_path, "grid.yaml", GRID)), "--offline")
    assert code == 0, out
    folder = tmp_path / "runs" / "grid"
    trials = state(folder)
    assert [t["state"] for t in trials] == ["finished"] * 4
    assert sorted((t["values"]["train.lr"], t["values"]["model.n_layers"]) for t in trials) == [(0.001, 1), (0.001, 2), (0.003, 1), (0.003, 2)]
    for t in trials:
        (log,) = wandb_files(folder / t["name"])
        assert [item["_step"] for item in history(log)] == [1, 2, 3, 4]
        run = inspect(log, summary=True)
        assert run["state"] == "finished" and run["config"]["train.lr"] == t["values"]["train.lr"]
        assert run["config"]["model.n_layers"] == t["values"]["model.n_layers"] and run["summary"]["val_loss"] == t["metric"]
    with open(folder / "trials.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["trial", "state", "train.lr", "model.n_layers", "val_loss", "error"]  # not the fixed train.max_steps
    assert "fixed: train.max_steps=4\n" in out and "train.max_steps " not in out.split("fixed:")[1]
    metrics = [float(row["val_loss"]) for row in table]
    assert metrics == sorted(metrics) and len(table) == 4
    best = min(trials, key=lambda t: t["metric"])
    assert table[0]["trial"] == best["name"] and f"best: {best['name']}" in out
    config = load_config(folder / "best.toml")  # runnable with gptkit run
    assert (config.train.lr, config.model.n_layers, config.train.max_steps) == (best["values"]["train.lr"], best["values"]["model.n_layers"], 4)
    assert (folder / "trials.png").read_bytes()[:4] == b"\x89PNG"


def test_a_random_sweep_with_count_3_runs_3_and_a_bayes_sweep_runs(tmp_path, monkeypatch):
    spec = GRID.replace("method: grid", "method: random").replace("{values: [0.001, 0.003]}", "{min: 0.0005, max: 0.005, distribution: log_uniform_values}")
    figures = []
    monkeypatch.setattr(plotting, "trials_figure", lambda *args: figures.append(trials_figure(*args)) or figures[-1])
    code, out = sweep(str(write(tmp_path, "random.yaml", spec)), "--offline", "--count", "3")
    assert code == 0, out
    trials = state(tmp_path / "runs" / "random")
    assert len(trials) == 3 and len({json.dumps(t["values"], sort_keys=True) for t in trials}) == 3
    assert all(0.0005 <= t["values"]["train.lr"] <= 0.005 for t in trials)
    with open(tmp_path / "runs" / "random" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["trial", "state", "train.lr", "model.n_layers", "val_loss", "error"]
    lr_axis, layers_axis = figures[0].axes  # trials.png: the swept parameters only
    assert (lr_axis.get_xlabel(), layers_axis.get_xlabel()) == ("train.lr", "model.n_layers")
    assert lr_axis.get_xscale() == "log" and layers_axis.get_xscale() == "linear"
    assert [text.get_text() for text in lr_axis.get_legend().get_texts()] == ["other trials", f"best: {rows[0]['trial']}"]
    code, out = sweep(str(write(tmp_path, "bayes.yaml", spec.replace("method: random", "method: bayes"))), "--offline", "--count", "2")
    assert code == 0, out
    assert [t["state"] for t in state(tmp_path / "runs" / "bayes")] == ["finished", "finished"]


def test_swept_parameters_and_the_trials_figure():
    """Fixed parameters are left out; W&B's log distributions get log axes, integer parameters
    (int_uniform, inferred from integer bounds, a list of integers, q with an integer q) integer
    ticks; the best trial is red and named in the legend."""
    spec = {"parameters": {
        "train.lr": {"min": 1e-4, "max": 1e-2, "distribution": "log_uniform_values"},
        "model.emb_dim": {"min": 16, "max": 64, "distribution": "q_log_uniform_values", "q": 16},
        "model.n_layers": {"min": 1, "max": 3},
        "train.batch_size": {"values": [2, 4]},
        "train.weight_decay": {"min": 0.0, "max": 0.2},
        "model.attention.name": {"values": ["causal", "causal-reference"]},
        "train.max_steps": {"value": 4},
        "train.grad_clip": {"values": [1.0]},
    }}
    swept, fixed = swept_parameters(spec)
    assert fixed == {"train.max_steps": 4, "train.grad_clip": 1.0}
    assert swept == [SweptParameter("train.lr", log=True), SweptParameter("model.emb_dim", log=True, integer=True),
                     SweptParameter("model.n_layers", integer=True), SweptParameter("train.batch_size", integer=True),
                     SweptParameter("train.weight_decay"), SweptParameter("model.attention.name")]
    trials = [{"name": f"trial-00{i}", "metric": 3.0 - i / 10, "values": {
        "train.lr": 10 ** -(1 + i), "model.emb_dim": 16 * i, "model.n_layers": i, "train.batch_size": 2 * i,
        "train.weight_decay": i / 20, "model.attention.name": ["causal", "causal-reference"][i % 2]}} for i in (1, 2, 3)]
    fig = trials_figure(trials[::-1], swept, "val_loss", "trial-003")
    fig.canvas.draw()
    axes = {ax.get_xlabel(): ax for ax in fig.axes}
    assert list(axes) == [p.key for p in swept] and all(ax.get_ylabel() == "val_loss" for ax in fig.axes)
    assert [key for key, ax in axes.items() if ax.get_xscale() == "log"] == ["train.lr", "model.emb_dim"]
    for key in ("model.n_layers", "train.batch_size"):
        ticks = [x for x in axes[key].get_xticks() if axes[key].get_xlim()[0] <= x <= axes[key].get_xlim()[1]]
        assert ticks and all(float(x).is_integer() for x in ticks), (key, ticks)
    assert [label.get_text() for label in axes["model.attention.name"].get_xticklabels()] == ["causal-reference", "causal"]
    legend = fig.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["other trials", "best: trial-003"]
    best_points = fig.axes[0].collections[1]
    assert best_points.get_offsets().tolist() == [[1e-4, 3.0 - 0.3]] and tuple(best_points.get_facecolor()[0]) == to_rgba("tab:red")


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec = GRID.replace("{values: [0.001, 0.003]}", "{values: [1.0e+30, 0.003]}").replace("{values: [1, 2]}", "{value: 1}")
    code, out = sweep(str(write(tmp_path, "fails.yaml", spec.replace("train.max_steps: {value: 4}", "train.max_steps: {value: 6}\n  train.grad_clip: {value: 0.0}"))), "--offline")
    assert code == 0, out
    failed, finished = state(tmp_path / "runs" / "fails")
    assert failed["state"] == "failed" and "training loss is nan" in failed["error"] and finished["state"] == "finished"
    assert inspect(wandb_files(tmp_path / "runs" / "fails" / failed["name"])[0], summary=True)["state"] == "failed"


def sweep_process(path: Path, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    """`gptkit sweep PATH ARGS` in a new process, with its own W&B service, as a new `gptkit sweep`
    has (not this process's, which WANDB_SERVICE names), and the sweep engine imported afresh."""
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "gptkit", "sweep", str(path), *args], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_during_trial_2(path: Path, folder: Path, *args: str) -> None:
    """Start the sweep in a new process and SIGKILL it once trial-002 has logged 3 steps."""
    proc = sweep_process(path, *args, cwd=folder.parent.parent)
    second = folder / "trial-002" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (second.is_file() and len(second.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_sweep_killed_after_its_first_trial_resumes_without_repeating_one(tmp_path):
    spec = GRID.replace("{values: [1, 2]}", "{value: 1}").replace("{values: [0.001, 0.003]}", "{values: [0.001, 0.002, 0.003]}")
    path = write(tmp_path, "cut.yaml", spec.replace("train.max_steps: {value: 4}", "train.max_steps: {value: 16}\n  train.checkpoint_every: {value: 1}"))
    folder = tmp_path / "runs" / "cut"
    kill_during_trial_2(path, folder)
    assert [t["state"] for t in state(folder)] == ["finished", "running"]
    code, out = sweep(str(path), "--resume")
    assert code == 0, out
    trials = state(folder)
    assert [t["name"] for t in trials] == ["trial-001", "trial-002", "trial-003"] and [t["state"] for t in trials] == ["finished"] * 3, trials
    assert sorted(t["values"]["train.lr"] for t in trials) == [0.001, 0.002, 0.003]
    cut = folder / "trial-002"
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 3
    run_id = (cut / "wandb" / "run-id").read_text().strip()
    logs = wandb_files(cut)  # the killed start's and the resumed one's, both W&B run `run_id`
    assert len(logs) == 2 and all(log.name == f"run-{run_id}.wandb" for log in logs)
    assert inspect(logs[1], summary=True)["run_id"] == run_id
    # What W&B had buffered of the killed start is lost with it (metrics.jsonl has every row); the
    # resumed start logs from the step after its checkpoint to the end, no step twice.
    resumed = [item["_step"] for item in history(logs[1])]
    assert resumed[0] > 1 and resumed == list(range(resumed[0], len(steps) + 1))
    assert [item["_step"] for item in history(logs[0])] == steps[: len(history(logs[0]))]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "bayes"])
def test_a_resumed_search_proposes_the_trials_of_an_unbroken_one(tmp_path, method):
    """Each proposal comes from (the sweep's seed, the trial's number), whatever the process has drawn
    or imported before: a sweep killed in trial 2 and resumed in a new process proposes the unbroken
    sweep's trial 3 (bayes too: resume is exact, so it sees the same metrics)."""
    spec = GRID.replace("method: grid", f"method: {method}").replace("{values: [0.001, 0.003]}", "{min: 0.0005, max: 0.005, distribution: log_uniform_values}")
    spec = spec.replace("train.max_steps: {value: 4}", "train.max_steps: {value: 12}\n  train.checkpoint_every: {value: 1}")
    for name in ("unbroken", "cut"):
        (tmp_path / name).mkdir()
    unbroken, cut = (write(tmp_path / name, "search.yaml", spec) for name in ("unbroken", "cut"))
    assert sweep_process(unbroken, "--offline", "--count", "3", cwd=unbroken.parent).wait() == 0
    kill_during_trial_2(cut, cut.parent / "runs" / "search", "--offline", "--count", "3")
    assert [t["state"] for t in state(cut.parent / "runs" / "search")] == ["finished", "running"]
    assert sweep_process(cut, "--offline", "--count", "3", "--resume", cwd=cut.parent).wait() == 0
    unbroken_trials, cut_trials = (state(p.parent / "runs" / "search") for p in (unbroken, cut))
    assert [t["values"] for t in cut_trials] == [t["values"] for t in unbroken_trials]
    assert len({t["values"]["train.lr"] for t in cut_trials}) == 3
    assert json.loads((cut.parent / "runs" / "search" / "sweep.json").read_text())["seed"] == 7  # tiny.toml's run.seed


BAD = {
    "unknown key": (GRID.replace("train.lr:", "train.lrr:"), "parameter train.lrr = 0.001: train.lrr: unknown key; did you mean 'lr'?"),
    "metric not logged": (GRID.replace("name: val_loss", "name: exact_match"), "metric 'exact_match': the pretrain recipe does not log it"),
    "unknown method": (GRID.replace("method: grid", "method: hyperopt"), "method 'hyperopt' is not one W&B knows (grid, random, bayes)"),
    "malformed yaml": (GRID.replace("parameters:", "parameters: [\n"), "invalid YAML: line 8: expected ',' or ']'"),
    "wrong type": (GRID.replace("{values: [1, 2]}", "{values: [1, two]}"), "parameter model.n_layers = 'two': model.n_layers: expected integer, got string 'two'"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sweep_files_fail_before_any_trial(tmp_path, case):
    text, message = BAD[case]
    code, out = sweep(str(write(tmp_path, "bad.yaml", text)), "--offline")
    assert code == 2 and out.startswith("error: ") and message in out and len(out.strip().splitlines()) == 1, out
    assert not (tmp_path / "runs").exists()


def test_bad_toml_sweep_file_and_count_below_1(tmp_path):
    code, out = sweep(str(write(tmp_path, "bad.toml", 'method = "grid"\nprogram = tiny.toml\n')), "--offline")
    assert code == 2 and "bad.toml: invalid TOML" in out and "line 2" in out
    code, out = sweep(str(write(tmp_path, "grid.yaml", GRID)), "--offline", "--count", "0")
    assert (code, out) == (2, "error: --count: must be >= 1, got 0\n")
    assert not (tmp_path / "runs").exists()


def test_wandb_agent_booleans_and_the_online_hand_over(tmp_path, monkeypatch):
    """W&B writes booleans as True/False on the command line; online, the sweep goes to wandb.sweep
    with gptkit's command and wandb.agent runs each trial in process from the agent's config file."""
    import wandb

    experiment = tiny_experiment(tmp_path)
    assert load_config(experiment, ["train.compile=False", "train.save_best=True"]).train.save_best is True
    calls = {}

    def fake_agent(sweep_id, function, count, project, entity):
        calls.update(sweep_id=sweep_id, count=count, project=project)
        params = tmp_path / "config-abc123.yaml"
        params.write_text("train.lr:\n  value: 0.002\ntrain.max_steps:\n  value: 2\n")
        monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
        monkeypatch.setenv("WANDB_RUN_ID", "abc123")
        function()

    monkeypatch.setattr(wandb, "sweep", lambda spec, project, entity: calls.update(spec=spec) or "sweep-id")
    monkeypatch.setattr(wandb, "agent", fake_agent)
    # WANDB_MODE=offline (the fixture) keeps the trial's W&B run, which takes W&B's own mode, off the network.
    from gptkit.sweep import load_sweep, run_online

    run_online(load_sweep(write(tmp_path, "grid.yaml", GRID)), count=1)
    assert calls["spec"]["command"] == ["gptkit", "run", "${program}", "${args_no_hyphens}"] and calls["count"] == 1
    trial = tmp_path / "runs" / "grid" / "abc123"
    assert (trial / "wandb" / "run-id").read_text().strip() == "abc123"
    assert [json.loads(line)["step"] for line in (trial / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_hyperband_stops_a_trial_that_falls_behind_at_an_evaluation(tmp_path):
    spec = GRID.replace("{values: [0.001, 0.003]}", "{values: [0.01, 1.0e-7]}").replace("{values: [1, 2]}", "{value: 1}")
    spec += "  train.eval_every: {value: 1}\n  train.max_steps: {value: 6}\nearly_terminate: {type: hyperband, min_iter: 2, eta: 3}\n"
    code, out = sweep(str(write(tmp_path, "hyperband.yaml", spec.replace("  train.max_steps: {value: 4}\n", ""))), "--offline")
    assert code == 0, out
    learns, stalls = state(tmp_path / "runs" / "hyperband")
    assert learns["state"] == "finished" and stalls["state"] == "stopped", (learns, stalls)
    assert stalls["error"].startswith("stopped by hyperband at step") and len(stalls["history"]) < len(learns["history"])


def test_a_trial_that_never_started_starts_without_looking_for_a_checkpoint(tmp_path, capsys):
    """Issue 21, item 11: a fresh trial says nothing of resuming; a trial with a folder resumes it."""
    from gptkit.sweep import load_sweep

    checked = load_sweep(write(tmp_path, "grid.yaml", GRID), runs_dir=tmp_path / "runs")
    assert checked.trial_config("trial-001", {"train.lr": 0.001, "model.n_layers": 1}, "offline").run.resume == "none"
    (checked.folder / "trial-002").mkdir(parents=True)
    assert checked.trial_config("trial-002", {"train.lr": 0.001, "model.n_layers": 1}, "offline").run.resume == "auto"
    code, out = sweep(str(tmp_path / "grid.yaml"), "--offline", "--count", "1")
    assert code == 0, out
    assert "no checkpoint" not in out + capsys.readouterr().out
