"""Pictures of a run: the loss curve (loss.png)."""

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
