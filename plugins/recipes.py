"""Recipes: short scripts that wire components into a job. `generate` samples text from a model."""

from __future__ import annotations

import time

from gptkit import hookimpl
from gptkit.generation import encode_prompt, generate_ids, make_generator
from gptkit.registry import registry
from gptkit.runs import build_context, build_model, out_dir_of, resolve_device, seed_everything, write_run_config


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


@hookimpl
def register_components(registry):
    registry.recipe.register("generate", generate_recipe, doc="Generate text from [generate] prompt with [generate] sampler.")
