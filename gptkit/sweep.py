"""`gptkit sweep`: hyperparameter sweeps over a gptkit experiment, in W&B's own sweep format.

A sweep file is W&B's sweep configuration (YAML, or TOML with the same keys): `method` (grid, random,
bayes), `metric` (a key the recipe logs, with its goal), `parameters` named by dotted config keys
with W&B's distributions, optional `early_terminate` (hyperband) and `run_cap`. `program` is the base
experiment, relative to the sweep file; `command` defaults to `gptkit run ${program}
${args_no_hyphens}`, so that a plain `wandb agent SWEEP_ID` started in the sweep file's folder runs
the same trials.

Everything is checked before the first trial (`load_sweep`): the file, the method, the metric
against the recipe's `metric_keys`, each parameter against the config's keys, and each value the
search can propose against its key's type. Then:

- online (`run_online`): `wandb.sweep` + `wandb.agent`; W&B's server picks each trial's values and
  each trial is a gptkit run in this process, with its own W&B run.
- offline (`run_offline`): the same search on `sweeps`, the engine W&B's server runs (grid, random
  and bayes suggestions; hyperband stopping at each evaluation). Trials are run folders
  `runs/<sweep>/<trial>/`, each with an offline W&B run; the state (`runs/<sweep>/sweep.json`) is
  saved atomically when a trial starts and ends, so running the sweep again continues it: finished
  trials are kept and a trial that was cut continues from its last checkpoint (`run.resume=auto`,
  same W&B id). Each proposal is drawn from the sweep's seed (the experiment's run.seed, recorded
  in sweep.json) and the trial's number, so a resumed sweep proposes what an unbroken one would.
  At the end: the trials sorted by the metric (trials.csv, trials.png) and the best trial's config
  as best.toml, runnable with `gptkit run`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import netrc
import os
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import attrs
import numpy as np
import tomli_w

from gptkit.config import Config, read_toml, structure, to_raw
from gptkit.errors import ConfigError, GptkitError, RunInterrupted
from gptkit.files import atomic_write_text, read_json, read_text
from gptkit.hookspecs import hookimpl
from gptkit.plotting import SweptParameter, plot_trials
from gptkit.plugins import registry
from gptkit.runs import run as run_config
from gptkit.metrics import read_metrics
from gptkit.suggest import did_you_mean
from gptkit.tables import aligned

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METHODS = ("grid", "random", "bayes")
DEFAULT_COMMAND = ["gptkit", "run", "${program}", "${args_no_hyphens}"]
STATE = "sweep.json"
FINISHED, FAILED, STOPPED, RUNNING = "finished", "failed", "stopped", "running"


@attrs.define
class Sweep:
    """A checked sweep file: `spec` W&B's sweep configuration as written; `program` the base
    experiment's path; `raw` its TOML data; `folder` where the offline trials go (runs/<sweep>);
    `seed` the offline search's seed: the experiment's run.seed (W&B's format has no seed key), the
    one recorded in sweep.json once the sweep has started."""

    path: Path
    spec: dict[str, Any]
    program: Path
    raw: dict[str, Any]
    folder: Path
    seed: int

    @property
    def metric(self) -> str:
        return self.spec["metric"]["name"]

    @property
    def maximize(self) -> bool:
        return self.spec["metric"].get("goal", "minimize") == "maximize"

    def trial_config(self, name: str, values: dict[str, Any], mode: str | None) -> Config:
        """The trial's resolved config: the experiment with the trial's values, its own run folder
        runs/<sweep>/<name> (resumed when it holds a checkpoint; a trial that never started has no
        folder, and starts without looking for one) and a W&B tracker grouped by sweep, in `mode`
        (None: W&B's own choice, WANDB_MODE or online)."""
        raw = json.loads(json.dumps(self.raw))
        trackers = raw.setdefault("track", {}).get("trackers", [])
        wandb = next((t for t in trackers if t.get("name") == "wandb"), {"name": "wandb"})
        wandb = {k: v for k, v in wandb.items() if k != "mode"} | ({"mode": mode} if mode else {}) | {"group": self.folder.name}
        raw["track"]["trackers"] = [*(t for t in trackers if t.get("name") != "wandb"), wandb]
        overrides = [override(key, value) for key, value in values.items()]
        resume = "auto" if (self.folder / name).exists() else "none"
        overrides += [f"run.name={name}", f"run.out_dir={self.folder / name}", f"run.resume={resume}"]
        return structure(raw, overrides, source=f"{self.program} with {' '.join(overrides)}", base=self.program.parent)


def override(key: str, value: Any) -> str:
    """`key=value` as `gptkit run` takes it: strings as written, anything else as a TOML literal."""
    if isinstance(value, str):
        return f"{key}={value}"
    return f"{key}={tomli_w.dumps({'v': value})[4:].strip()}"


# --- the sweep file ---------------------------------------------------------------------------------


def sweep_engine():
    """W&B's `sweeps` package, imported when a sweep runs and quietly: on import it warns about its
    own pydantic settings, which is nothing a user can act on. It is installed without its
    dependencies (its metadata pins numpy<2, yet it runs on numpy 2); the `wandb` extra holds the
    others."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2", category=UserWarning)
        try:
            import sweeps
            # The modules `sweeps` imports on its first proposal: importing them (scipy, sklearn) draws
            # from Python's global generator, which would make the first proposal of a process differ
            # from the same proposal later in a process, and a resumed sweep differ from an unbroken one.
            from sweeps import bayes_search, grid_search, random_search  # noqa: F401
        except ImportError:
            raise GptkitError("gptkit sweep needs W&B's sweep engine: pip install 'gptkit[wandb]' && pip install --no-deps 'sweeps>=0.3'") from None
    return sweeps


def read_spec(path: Path) -> dict[str, Any]:
    """The sweep file's data (YAML, or TOML by its suffix); a malformed file names its line."""
    import yaml  # PyYAML comes with the wandb extra (wandb and sweeps require it)

    text = read_text(path)
    if path.suffix == ".toml":
        try:
            spec = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GptkitError(f"{path}: invalid TOML: {exc}") from None
    else:
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise GptkitError(f"{path}: invalid YAML: {where}{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(spec, dict):
        raise GptkitError(f"{path}: a sweep file is a mapping of W&B's sweep keys (method, metric, parameters, program)")
    return spec


def load_sweep(path: str | Path, runs_dir: Path = Path("runs")) -> Sweep:
    """Read and check a sweep file; every error is raised here, before any trial or file."""
    engine = sweep_engine()  # first: without the wandb extra, say so before anything else
    path = Path(path)
    spec = read_spec(path)
    method = spec.get("method")
    if method not in METHODS:
        raise GptkitError(f"{path}: method {method!r} is not one W&B knows ({', '.join(METHODS)})")
    violations = engine.schema_violations_from_proposed_config(spec)
    if violations:
        raise GptkitError(f"{path}: not a valid W&B sweep configuration: {'; '.join(violations)}")
    if not isinstance(spec.get("program"), str):
        raise GptkitError(f"{path}: program: required: the experiment TOML the trials run, relative to the sweep file")
    program = path.parent / spec["program"]
    raw = read_toml(program)
    base = structure(raw, source=str(program), base=program.parent)
    sweep = Sweep(path, spec, program, raw, runs_dir / path.stem, base.run.seed)
    check_metric(sweep)
    for key, parameter in spec["parameters"].items():
        check_parameter(sweep, key, parameter)
    return sweep


def check_metric(sweep: Sweep) -> None:
    recipe_name = sweep.raw.get("run", {}).get("recipe")
    keys = getattr(registry.recipe.get(recipe_name).factory, "metric_keys", ())
    name = (sweep.spec.get("metric") or {}).get("name")
    if name not in keys:
        said = "metric.name: required" if name is None else f"metric {name!r}: the {recipe_name} recipe does not log it{did_you_mean(name, keys)}"
        raise GptkitError(f"{sweep.path}: {said} (it logs: {', '.join(keys)})")


def check_parameter(sweep: Sweep, key: str, parameter: dict[str, Any]) -> None:
    """The key is a config key, and each value the search can propose has its key's type."""
    if "parameters" in parameter:
        raise GptkitError(f"{sweep.path}: parameter {key}: nested parameters are not supported; name the dotted key instead")
    for value in proposable(parameter):
        try:
            structure(sweep.raw, [override(key, value)], base=sweep.program.parent)
        except ConfigError as exc:
            raise GptkitError(f"{sweep.path}: parameter {key} = {value!r}: {exc.problems[0]} (the trial's config: {sweep.program} {override(key, value)})") from None


def proposable(parameter: dict[str, Any]) -> list[Any]:
    """The values to check of a parameter: all its `values`, its `value`, or the ends of its range."""
    if "values" in parameter:
        return list(parameter["values"])
    if "value" in parameter:
        return [parameter["value"]]
    return [parameter[end] for end in ("min", "max") if end in parameter]


# --- offline ----------------------------------------------------------------------------------------


class HyperbandStopper:
    """Watches an offline trial when the sweep has `early_terminate`: at each evaluation it asks
    `sweeps.stop_runs` (hyperband) whether this trial falls behind the finished ones, and if so asks
    the run to stop (the trial then ends as early stopping ends a run, its checkpoint saved)."""

    def __init__(self, sweep: Sweep, trials: list[dict[str, Any]], trial: dict[str, Any]):
        self.sweep, self.trials, self.trial = sweep, trials, trial
        self.history: list[dict[str, Any]] = []
        self.stopped_at: int | None = None

    @hookimpl
    def on_eval(self, run, step, metrics):
        self.history.append({self.sweep.metric: metrics.get(self.sweep.metric)})
        running = {**self.trial, "state": RUNNING, "history": self.history}
        stop = sweep_engine().stop_runs(self.sweep.spec, [sweep_run(t) for t in [*self.trials, running]])
        if any(r.name == self.trial["name"] for r in stop):
            self.stopped_at = step
            run.request_stop(f"hyperband: {self.trial['name']} falls behind the finished trials at step {step}")


def sweep_run(trial: dict[str, Any]):
    """A trial as the `sweeps` engine sees it (a SweepRun)."""
    state = {FINISHED: "finished", FAILED: "failed", STOPPED: "killed", RUNNING: "running"}[trial["state"]]
    summary = {} if trial.get("metric") is None else {trial["metric_name"]: trial["metric"]}
    return sweep_engine().SweepRun(
        name=trial["name"],
        config={k: {"value": v} for k, v in trial["values"].items()},
        state=state,
        summary_metrics=summary,
        history=trial.get("history", []),
    )


@contextlib.contextmanager
def search_seeded(seed: int) -> Iterator[None]:
    """`sweeps` draws from Python's and numpy's global generators, which each trial reseeds with
    run.seed: the search draws from its own seed (the sweep's seed, trial number) instead, so that it
    proposes new values each trial and the same ones when a sweep is run again or resumed."""
    states = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def suggest(sweep: Sweep, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The next trial's values from the `sweeps` engine, or None when the search is exhausted (grid)."""
    with search_seeded(sweep.seed * 1009 + len(trials)):
        proposed = sweep_engine().next_run(sweep.spec, [sweep_run(t) for t in trials])
    return None if proposed is None else {k: v["value"] for k, v in proposed.config.items()}


def load_state(sweep: Sweep, resume: bool) -> list[dict[str, Any]]:
    """The trials so far of this sweep (re-running the same sweep continues it, with its seed)."""
    state_path = sweep.folder / STATE
    if not state_path.is_file():
        if resume:
            raise GptkitError(f"--resume: {state_path} does not exist; no sweep {sweep.path} to continue")
        return []
    state = read_json(state_path)
    if state["spec"] != sweep.spec:
        raise GptkitError(
            f"{sweep.folder} holds a sweep of another configuration than {sweep.path}; "
            "restore the file, or delete or move that folder to start anew"
        )
    sweep.seed = state.get("seed", sweep.seed)
    return state["trials"]


def save_state(sweep: Sweep, trials: list[dict[str, Any]]) -> None:
    state = {"sweep_file": str(sweep.path), "spec": sweep.spec, "seed": sweep.seed, "trials": trials}
    atomic_write_text(sweep.folder / STATE, json.dumps(state, indent=1) + "\n")


def trial_cap(sweep: Sweep, count: int | None) -> int | None:
    cap = count or sweep.spec.get("run_cap")
    if cap is None and sweep.spec["method"] != "grid":
        raise GptkitError(f"{sweep.path}: a {sweep.spec['method']} search never ends by itself: give --count N (or run_cap in the sweep file)")
    return cap


def run_offline(sweep: Sweep, count: int | None = None, resume: bool = False, log=print) -> list[dict[str, Any]]:
    """Run the sweep locally up to `count` trials in all (the grid's size for a grid without one);
    returns the trials, best first."""
    cap = trial_cap(sweep, count)
    trials = load_state(sweep, resume)
    while cap is None or len(trials) < cap or any(t["state"] == RUNNING for t in trials):
        trial = next((t for t in trials if t["state"] == RUNNING), None)
        if trial is None:
            values = suggest(sweep, trials)
            if values is None:
                break
            trial = {"name": f"trial-{len(trials) + 1:03d}", "values": values, "state": RUNNING, "metric_name": sweep.metric}
            trials.append(trial)
        sweep.folder.mkdir(parents=True, exist_ok=True)
        save_state(sweep, trials)
        log(f"sweep {sweep.folder.name}: {trial['name']} " + " ".join(override(k, v) for k, v in trial["values"].items()))
        run_trial(sweep, trials, trial)
        save_state(sweep, trials)
    if not trials:
        raise GptkitError(f"{sweep.path}: the search proposed no trial")
    return report(sweep, trials, log)


def run_trial(sweep: Sweep, trials: list[dict[str, Any]], trial: dict[str, Any]) -> None:
    """One trial in this process; a trial that fails is recorded as failed and the sweep goes on."""
    config = sweep.trial_config(trial["name"], trial["values"], "offline")
    stopper = HyperbandStopper(sweep, [t for t in trials if t is not trial], trial) if "early_terminate" in sweep.spec else None
    try:
        metrics = run_config(config, observers=[stopper] if stopper else [])
        if stopper is not None and stopper.stopped_at is not None:
            trial.update(state=STOPPED, error=f"stopped by hyperband at step {stopper.stopped_at}")
        else:
            trial.update(state=FINISHED, metric=metrics.get(sweep.metric))
    except RunInterrupted as exc:
        raise RunInterrupted(
            checkpoint=exc.checkpoint, step=exc.step, signal=exc.signal, metrics=exc.metrics,
            resume_command=f"gptkit sweep {sweep.path} --resume",
        ) from None
    except Exception as exc:  # noqa: BLE001 - any failure of one trial is that trial's
        trial.update(state=FAILED, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
    metrics_file = sweep.folder / trial["name"] / "metrics.jsonl"
    rows = [{sweep.metric: r[sweep.metric]} for r in (read_metrics(metrics_file) if metrics_file.is_file() else []) if sweep.metric in r]
    trial["history"] = rows
    if trial.get("metric") is None and rows and trial["state"] != FAILED:
        trial["metric"] = rows[-1][sweep.metric]


# --- the result -------------------------------------------------------------------------------------


def ranked(sweep: Sweep, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials with a finite metric, best first, then the others (failed, stopped) in order."""
    scored = [t for t in trials if isinstance(t.get("metric"), (int, float)) and math.isfinite(t["metric"]) and t["state"] == FINISHED]
    scored.sort(key=lambda t: t["metric"], reverse=sweep.maximize)
    return scored + [t for t in trials if t not in scored]


def swept_parameters(spec: dict[str, Any]) -> tuple[list[SweptParameter], dict[str, Any]]:
    """The parameters the search varies, with how to draw them, and the fixed ones ({key: value}: a
    `value`, or `values` of one). Distributions as W&B's engine reads them (it infers int_uniform
    from integer bounds, for one): log axes for the log ones, integer ticks for integer ones."""
    from sweeps.params import HyperParameter

    swept, fixed = [], {}
    for key, parameter in spec["parameters"].items():
        config = HyperParameter(key, parameter).config
        distribution, values = config["distribution"], config.get("values")
        if distribution == "constant" or (values is not None and len(values) == 1):
            fixed[key] = config["value"] if distribution == "constant" else values[0]
            continue
        integer = (distribution == "int_uniform" or (distribution.startswith("q_") and isinstance(config.get("q"), int))
                   or (values is not None and all(isinstance(v, int) and not isinstance(v, bool) for v in values)))
        swept.append(SweptParameter(key, log="log" in distribution, integer=integer))
    return swept, fixed


def report(sweep: Sweep, trials: list[dict[str, Any]], log=print) -> list[dict[str, Any]]:
    """Print the table and write trials.csv, trials.png and best.toml; returns the trials, best first.
    The table, trials.csv and trials.png show the swept parameters only: the fixed ones are the same
    in every trial, printed once above the table and kept in sweep.json and best.toml."""
    order = ranked(sweep, trials)
    best = order[0]
    swept, fixed = swept_parameters(sweep.spec)
    keys = [p.key for p in swept]
    header = ["trial", "state", *keys, sweep.metric, "error"]
    table = [[t["name"], t["state"], *(t["values"].get(k) for k in keys), t.get("metric"), t.get("error", "")] for t in order]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *table])
    atomic_write_text(sweep.folder / "trials.csv", out.getvalue())
    plot_trials(order, swept, sweep.metric, best["name"] if best["state"] == FINISHED else None, sweep.folder / "trials.png")
    if fixed:
        log("fixed: " + " ".join(override(k, v) for k, v in fixed.items()))
    for line in aligned([[show(cell) for cell in row] for row in [header, *table]]):
        log(line)
    if best["state"] == FINISHED:
        config = sweep.trial_config(best["name"], best["values"], "offline")
        raw = to_raw(config)
        raw.pop("provenance", None)
        raw["run"].update(name=f"{sweep.folder.name}-best", resume="none")
        raw["run"].pop("out_dir", None)
        atomic_write_text(sweep.folder / "best.toml", f"# The best trial of {sweep.path}: {best['name']}, {sweep.metric} = {best['metric']}\n" + tomli_w.dumps(raw))
        log(f"best: {best['name']} ({sweep.metric} = {best['metric']:.4g}); its config: {sweep.folder / 'best.toml'}")
    return order


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


# --- online -----------------------------------------------------------------------------------------


def has_credentials() -> bool:
    """Whether W&B can log in here: WANDB_API_KEY, or a ~/.netrc entry for its host (`wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def is_offline(offline_flag: bool) -> bool:
    return offline_flag or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") or not has_credentials()


def run_online(sweep: Sweep, count: int | None = None) -> str:
    """A W&B sweep: `wandb.sweep` registers it, and `wandb.agent` runs `count` trials (W&B's
    meaning: the trials of this agent; more agents may join with `wandb agent SWEEP_ID`)."""
    import wandb

    spec = {**sweep.spec, "command": sweep.spec.get("command", DEFAULT_COMMAND)}
    project = spec.get("project") or next((t.get("project") for t in sweep.raw.get("track", {}).get("trackers", []) if t.get("name") == "wandb"), None) or "gptkit"
    sweep_id = wandb.sweep(spec, project=project, entity=spec.get("entity"))
    wandb.agent(sweep_id, function=lambda: online_trial(sweep), count=count, project=project, entity=spec.get("entity"))
    return sweep_id


def online_trial(sweep: Sweep) -> None:
    """One trial under `wandb.agent`: the values W&B's server chose (the agent's config file), in
    the run folder runs/<sweep>/<W&B run id>, tracked online by the W&B run the agent named."""
    import yaml

    with open(os.environ["WANDB_SWEEP_PARAM_PATH"], encoding="utf-8") as f:
        values = {k: v["value"] for k, v in (yaml.safe_load(f) or {}).items() if k in sweep.spec["parameters"]}
    run_config(sweep.trial_config(os.environ["WANDB_RUN_ID"], values, None))
