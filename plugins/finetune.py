"""Finetune strategies (see gptkit.interfaces.Finetune): what trains, and what a checkpoint holds.

`full`: every parameter trains and the saved weights are the model's own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptkit import hookimpl
from gptkit.checkpoint import model_state_for_saving


class FullFinetune:
    """Every parameter trains; checkpoints hold the model's weights, which are all that training changed."""

    def prepare(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            p.requires_grad_(True)

    def saved_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return model_state_for_saving(model)

    def trained_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        return None

    def load_trained_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError("full fine-tuning resumes from the saved weights")

    def save_files(self, model: torch.nn.Module, directory: Path) -> None:
        pass


@hookimpl
def register_components(registry):
    registry.finetune.register("full", lambda ctx: FullFinetune(), doc="Every parameter trains.")
