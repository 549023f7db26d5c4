"""Recipes: short scripts that wire components into a job, on the one run setup (gptkit.runs).

`generate` samples text from a model, `pretrain` trains one on a dataset with the training engine,
`evaluate` measures a model's loss and perplexity on a text.
"""

from __future__ import annotations

import json
import time

from gptkit import hookimpl
from gptkit.checkpoint import MODEL, save_model
from gptkit.data import split_dataset
from gptkit.errors import GptkitError
from gptkit.evaluation import text_loss
from gptkit.files import atomic_write_text, read_text
from gptkit.generation import text_generation
from gptkit.plugins import registry
from gptkit.runs import setup_run
from gptkit.training import Trainer


def generate_recipe(config):
    """Sample `[generate] max_new_tokens` tokens after `[generate] prompt`; print and save them, and
    save the model as `model/` so the run folder is a SOURCE for `gptkit generate` and `gptkit.load_model`."""
    run = setup_run(config)
    g = config.generate
    generation = text_generation(
        run.model,
        run.tokenizer,
        [g.prompt],
        max_new_tokens=g.max_new_tokens,
        sampler=registry.sampler.build(g.sampler, run.ctx),
        seed=config.run.seed,
        ignore_eos=g.ignore_eos,
    )
    start = time.perf_counter()
    (completion,) = generation.run()
    seconds = time.perf_counter() - start
    text = g.prompt + run.tokenizer.decode(completion.new_ids)
    print(text)
    run.write_config()
    atomic_write_text(run.out_dir / "samples.txt", text + "\n")
    save_model(run.out_dir / MODEL, run.model, run.tokenizer)
    new_tokens = len(completion.new_ids)
    return {"new_tokens": new_tokens, "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0}


generate_recipe.metric_keys = ("new_tokens", "tokens_per_s")

TRAINING_KEYS = ("step", "epoch", "tokens_seen", "lr", "loss", "tokens_per_s", "train_loss", "val_loss")


def pretrain_recipe(config):
    """Train `[model]` on `[data] dataset` (split by `[data] split`) with the training engine."""
    if config.data.dataset is None:
        raise GptkitError("data.dataset: required by the pretrain recipe (e.g. { name = \"text\", path = \"book.txt\" })")
    run = setup_run(config)
    trainer = Trainer(run)
    dataset = registry.dataset.build(config.data.dataset, run.ctx)
    parts = split_dataset(dataset, config.data.split, config.data.split_order)
    collator = registry.collator.build(config.data.collator, run.ctx)
    return trainer.fit(parts["train"], parts["val"], collator)


pretrain_recipe.metric_keys = TRAINING_KEYS


def evaluate_recipe(config):
    """Loss and perplexity of the model (`[init] checkpoint`, or `[model]`) on the text file `[eval] text`."""
    if config.eval.text is None:
        raise GptkitError("eval.text: required by the evaluate recipe (a UTF-8 text file)")
    run = setup_run(config)
    result = text_loss(run.model, run.tokenizer.encode(read_text(config.eval.text)), stride=config.eval.stride)
    run.write_config()
    atomic_write_text(run.out_dir / "eval.json", json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


evaluate_recipe.metric_keys = ("loss", "perplexity", "tokens")


@hookimpl
def register_components(registry):
    registry.recipe.register("generate", generate_recipe, doc="Generate text from [generate] prompt with [generate] sampler.")
    registry.recipe.register("pretrain", pretrain_recipe, doc="Train [model] on [data] dataset: checkpoints, metrics.jsonl, loss.png, samples.")
    registry.recipe.register("evaluate", evaluate_recipe, doc="Loss and perplexity of the model on [eval] text (sliding windows).")
