"""The `evaluate` recipe: a model's loss and perplexity on a text."""

from __future__ import annotations

import json

from gptkit.errors import GptkitError
from gptkit.evaluation import text_loss
from gptkit.files import atomic_write_text, read_text
from gptkit.runs import setup_run


def evaluate_recipe(config):
    """Loss and perplexity of the model (`[init] checkpoint`, or `[model]`) on the text file `[eval] text`."""
    if config.eval.text is None:
        raise GptkitError("eval.text: required by the evaluate recipe (a UTF-8 text file)")
    run = setup_run(config)
    result = text_loss(run.model, run.tokenizer.encode(read_text(config.eval.text)), stride=config.eval.stride)
    if run.is_main:  # under torchrun every rank computes the same; rank 0 writes
        run.write_config()
        atomic_write_text(run.out_dir / "eval.json", json.dumps(result) + "\n")
        print(json.dumps(result))
    return result


evaluate_recipe.metric_keys = ("loss", "perplexity", "tokens")
