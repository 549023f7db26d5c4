"""The `pretrain` recipe: train a model on a dataset with the training engine."""

from __future__ import annotations

from gptkit.data import split_dataset
from gptkit.errors import GptkitError
from gptkit.plugins import registry
from gptkit.runs import setup_run
from gptkit.training import fit

TRAINING_KEYS = ("step", "epoch", "tokens_seen", "lr", "loss", "tokens_per_s", "train_loss", "val_loss")


def pretrain_recipe(config):
    """Train `[model]` on `[data] dataset` (split by `[data] split`) with the training engine."""
    if config.data.dataset is None:
        raise GptkitError("data.dataset: required by the pretrain recipe (e.g. { name = \"text\", path = \"book.txt\" })")
    run = setup_run(config)
    dataset = registry.dataset.build(config.data.dataset, run.ctx)
    parts = split_dataset(dataset, config.data.split, config.data.split_order)
    collator = registry.collator.build(config.data.collator, run.ctx)
    return fit(run, parts["train"], parts["val"], collator)


pretrain_recipe.metric_keys = TRAINING_KEYS
