"""Recipes, the top layer: short scripts that wire components into a job on the one run setup
(gptkit.runs.setup_run), one module each. They are registered as built-in components of kind
`recipe` (entry point `recipes`), so `[run] recipe` picks one by name as it picks any component.

`generate` samples text from a model, `pretrain` trains one on a dataset with the training engine,
`instruct` fine-tunes one on instruction records and scores its answers on the held-out ones,
`evaluate` measures a model's loss and perplexity on a text. The commands `gptkit generate`,
`gptkit eval` and `gptkit chat` use the same pieces on a model given by SOURCE.
"""

from __future__ import annotations

from gptkit.hookspecs import hookimpl
from gptkit.recipes.evaluate import evaluate_recipe
from gptkit.recipes.generate import generate_recipe
from gptkit.recipes.instruct import instruct_recipe
from gptkit.recipes.pretrain import pretrain_recipe


@hookimpl
def register_components(registry):
    registry.recipe.register("generate", generate_recipe, doc="Generate text from [generate] prompt with [generate] sampler.")
    registry.recipe.register("pretrain", pretrain_recipe, doc="Train [model] on [data] dataset: checkpoints, metrics.jsonl, loss.png, samples.")
    registry.recipe.register("instruct", instruct_recipe, doc="Instruction fine-tuning: train, then responses.json and scores.json on the test records.")
    registry.recipe.register("evaluate", evaluate_recipe, doc="Loss and perplexity of the model on [eval] text (sliding windows).")
