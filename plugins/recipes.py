"""Recipes: short scripts that wire components into a job.

`generate` samples text from a model, `pretrain` trains one on a dataset with the training engine,
`evaluate` measures a model's loss and perplexity on a text.
"""

from __future__ import annotations

import json
import time

from gptkit import hookimpl
from gptkit.errors import GptkitError
from gptkit.generation import encode_prompt, generate_ids, make_generator
from gptkit.registry import registry
from gptkit.runs import (
    atomic_write_text,
    build_context,
    build_model,
    out_dir_of,
    read_text,
    resolve_device,
    seed_everything,
    write_run_config,
)
from gptkit.training import Trainer, split_dataset, text_loss


def generate_recipe(config):
    """Sample `[generate] max_new_tokens` tokens after `[generate] prompt`; print and save them."""
    seed_everything(config.run.seed)
    device = resolve_device(config.run.device)
    out_dir = out_dir_of(config)
    ctx = build_context(config, device, out_dir)
    model = build_model(config, ctx)
    sampler = registry.sampler.build(config.generate.sampler, ctx)
    write_run_config(config, out_dir, device)
    tokenizer = ctx.tokenizer
    prompt_ids = encode_prompt(tokenizer, config.generate.prompt)
    start = time.perf_counter()
    (completion,) = generate_ids(
        model,
        [prompt_ids],
        max_new_tokens=config.generate.max_new_tokens,
        sampler=sampler,
        eos_id=None if config.generate.ignore_eos else tokenizer.eos_id,
        generator=make_generator(config.run.seed, device),
    )
    new_ids = completion.new_ids
    seconds = time.perf_counter() - start
    text = config.generate.prompt + tokenizer.decode(new_ids)
    print(text)
    (out_dir / "samples.txt").write_text(text + "\n", encoding="utf-8")
    return {"new_tokens": len(new_ids), "tokens_per_s": len(new_ids) / seconds if seconds > 0 else 0.0}


generate_recipe.metric_keys = ("new_tokens", "tokens_per_s")

TRAINING_KEYS = ("step", "epoch", "tokens_seen", "lr", "loss", "tokens_per_s", "train_loss", "val_loss")


def pretrain_recipe(config):
    """Train `[model]` on `[data] dataset` (split by `[data] split`) with the training engine."""
    if config.data.dataset is None:
        raise GptkitError("data.dataset: required by the pretrain recipe (e.g. { name = \"text\", path = \"book.txt\" })")
    trainer = Trainer(config)
    dataset = registry.dataset.build(config.data.dataset, trainer.ctx)
    train_set, val_set = split_dataset(dataset, config.data.split)[:2]
    collator = registry.collator.build(config.data.collator, trainer.ctx)
    return trainer.fit(train_set, val_set, collator)


pretrain_recipe.metric_keys = TRAINING_KEYS


def evaluate_recipe(config):
    """Loss and perplexity of the model (`[init] checkpoint`, or `[model]`) on the text file `[eval] text`."""
    if config.eval.text is None:
        raise GptkitError("eval.text: required by the evaluate recipe (a UTF-8 text file)")
    seed_everything(config.run.seed)
    device = resolve_device(config.run.device)
    out_dir = out_dir_of(config)
    ctx = build_context(config, device, out_dir)
    model = build_model(config, ctx)
    ids = ctx.tokenizer.encode(read_text(config.eval.text))
    result = text_loss(model, ids, stride=config.eval.stride)
    write_run_config(config, out_dir, device)
    atomic_write_text(out_dir / "eval.json", json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


evaluate_recipe.metric_keys = ("loss", "perplexity", "tokens")


@hookimpl
def register_components(registry):
    registry.recipe.register("generate", generate_recipe, doc="Generate text from [generate] prompt with [generate] sampler.")
    registry.recipe.register("pretrain", pretrain_recipe, doc="Train [model] on [data] dataset: checkpoints, metrics.jsonl, loss.png, samples.")
    registry.recipe.register("evaluate", evaluate_recipe, doc="Loss and perplexity of the model on [eval] text (sliding windows).")
