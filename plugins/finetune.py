"""Finetune strategies: what trains and what is frozen. `full`: every parameter trains."""

from __future__ import annotations

from gptkit import hookimpl


def train_everything(model):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@hookimpl
def register_components(registry):
    registry.finetune.register("full", lambda ctx: train_everything, doc="Every parameter trains.")
