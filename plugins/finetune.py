"""Finetune strategies (see gptkit.interfaces.Finetune): what trains, and what a checkpoint holds.

`full`: every parameter trains. `freeze`: only the top blocks, the final norm and an untied head
train. Both save the model's own weights, which are all that training changed. `lora` lives in
gptkit_plugins.lora.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from gptkit import hookimpl
from gptkit.checkpoint import model_state_for_saving
from gptkit.errors import GptkitError


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
        raise GptkitError(
            "run.resume: the checkpoint holds the tensors of an adapter (such as lora's); resume it with the train.finetune it was trained with"
        )

    def save_files(self, model: torch.nn.Module, directory: Path, trained_state: dict[str, torch.Tensor] | None = None) -> None:
        pass


@attrs.define
class FreezeParams:
    trainable_blocks: int = attrs.field(default=1, validator=attrs.validators.ge(0))


class FreezeFinetune(FullFinetune):
    """Only the top `trainable_blocks` transformer blocks, the final norm and the output head train,
    as in the book's classification fine-tuning (ch06): the lower blocks keep their general features
    and their gradients and optimizer state cost nothing. Saved like `full`.

    A tied head (model.tie_weights) *is* the token embedding, so training it would train the
    embeddings too; it stays frozen with them, and only the blocks and the final norm train.
    """

    def __init__(self, trainable_blocks: int):
        self.trainable_blocks = trainable_blocks

    def prepare(self, model: torch.nn.Module) -> None:
        n_layers = len(model.blocks)
        if self.trainable_blocks > n_layers:
            raise GptkitError(f"train.finetune.trainable_blocks = {self.trainable_blocks}, but the model has only {n_layers} layers (n_layers)")
        trainable = [*model.blocks[n_layers - self.trainable_blocks :], model.final_norm]
        if not model.config.tie_weights:
            trainable.append(model.head)
        model.requires_grad_(False)
        for module in trainable:
            module.requires_grad_(True)


@hookimpl
def register_components(registry):
    registry.finetune.register("full", lambda ctx: FullFinetune(), doc="Every parameter trains.")
    registry.finetune.register(
        "freeze",
        lambda ctx, trainable_blocks: FreezeFinetune(trainable_blocks),
        params=FreezeParams,
        doc="Only the top trainable_blocks blocks, the final norm and an untied head train.",
    )
