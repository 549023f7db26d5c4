"""Pictures of a run: the loss curve (loss.png); of a sweep: the metric of each trial (trials.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def plot_trials(trials: list[dict[str, Any]], keys: list[str], metric: str, path: Path) -> None:
    """One panel per swept parameter: each finished trial's metric against its value (values that
    are not numbers are placed in order of appearance, labelled); the best trial (first) in red."""
    done = [t for t in trials if isinstance(t.get("metric"), (int, float))]
    fig = Figure(figsize=(4 * len(keys), 3))
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        values = [t["values"].get(key) for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = list(dict.fromkeys(map(str, values)))
        xs = values if numeric else [labels.index(str(v)) for v in values]
        ax.scatter(xs, [t["metric"] for t in done], color=["tab:red" if j == 0 else "tab:blue" for j in range(len(done))])
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
