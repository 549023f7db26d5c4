"""The `generate` recipe: sample text from a model, and keep the model beside it."""

from __future__ import annotations

import time

from gptkit.checkpoint import MODEL, save_model
from gptkit.files import atomic_write_text
from gptkit.generation import text_generation
from gptkit.plugins import registry
from gptkit.runs import setup_run


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
    if run.is_main:  # under torchrun every rank generates the same; rank 0 writes
        print(text)
        run.write_config()
        atomic_write_text(run.out_dir / "samples.txt", text + "\n")
        save_model(run.out_dir / MODEL, run.model, run.tokenizer)
    new_tokens = len(completion.new_ids)
    return {"new_tokens": new_tokens, "tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0}


generate_recipe.metric_keys = ("new_tokens", "tokens_per_s")
