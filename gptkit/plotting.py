"""Pictures of a run: the loss curve (loss.png); of a sweep: the metric of each trial (trials.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gptkit.files import atomic_path


def plot_losses(rows: list[dict[str, Any]], path: Path) -> None:
    """Train and val loss against epochs (bottom axis) and tokens seen (top axis), as the original scripts plot."""
    evals = [r for r in rows if "val_loss" in r]
    if not evals:
        return
    epochs = [r["epoch"] for r in evals]
    train, val = [r["train_loss"] for r in evals], [r["val_loss"] for r in evals]
    fig = Figure(figsize=(5, 3))
    FigureCanvasAgg(fig)
    ax1 = fig.add_subplot()
    ax1.plot(epochs, train, label="Training loss")
    ax1.plot(epochs, val, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()
    ax2.plot([r["tokens_seen"] for r in evals], train, alpha=0)  # invisible: aligns the top axis
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)


@attrs.frozen
class SweptParameter:
    """A swept parameter as trials.png draws it: `log` axis for W&B's log distributions, integer
    ticks for integer ones (int_uniform, a list of integers)."""

    key: str
    log: bool = False
    integer: bool = False


def trials_figure(trials: list[dict[str, Any]], parameters: list[SweptParameter], metric: str, best: str | None) -> Figure:
    """One panel per swept parameter: each trial's metric (where it has one) against its value
    (values that are not numbers are placed in order of appearance, labelled); the trial named
    `best` in red, named in the legend. Nothing swept: the metric of each trial, by name."""
    done = [t for t in trials if isinstance(t.get("metric"), (int, float))]
    panels = parameters or [SweptParameter("trial")]
    fig = Figure(figsize=(4 * len(panels), 3.2))
    FigureCanvasAgg(fig)
    for i, parameter in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        values = [t["values"].get(parameter.key) if parameters else t["name"] for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = list(dict.fromkeys(map(str, values)))
        xs = values if numeric else [labels.index(str(v)) for v in values]
        others = [j for j, t in enumerate(done) if t["name"] != best]
        if others:
            ax.scatter([xs[j] for j in others], [done[j]["metric"] for j in others], color="tab:blue", label="other trials")
        for j in (j for j, t in enumerate(done) if t["name"] == best):
            ax.scatter([xs[j]], [done[j]["metric"]], color="tab:red", label=f"best: {best}", zorder=3)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        elif parameter.log:
            ax.set_xscale("log")
        elif parameter.integer:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(parameter.key)
        ax.set_ylabel(metric)
        if i == 0 and done:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_trials(trials: list[dict[str, Any]], parameters: list[SweptParameter], metric: str, best: str | None, path: Path) -> None:
    """trials.png of a sweep (see `trials_figure`)."""
    fig = trials_figure(trials, parameters, metric, best)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
