"""Recipes: short scripts that wire components into a job, on the one run setup (gptkit.runs).

`generate` samples text from a model, `pretrain` trains one on a dataset with the training engine,
`instruct` fine-tunes one on instruction records and scores its answers on the held-out ones,
`evaluate` measures a model's loss and perplexity on a text.
"""

from __future__ import annotations

import json
import time

from tqdm import tqdm

from gptkit import hookimpl
from gptkit.checkpoint import MODEL, save_model
from gptkit.data import split_dataset
from gptkit.errors import GptkitError
from gptkit.evaluation import result_line, score_responses, text_loss
from gptkit.files import atomic_write_text, read_text
from gptkit.generation import generate, text_generation
from gptkit.plugins import registry
from gptkit.runs import setup_run
from gptkit.training import fit


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


def instruct_recipe(config):
    """Fine-tune on `[data] dataset` instruction records in `[data] prompt`'s format (the original
    ch07 recipe), then answer the test records (responses.json) and score the answers (scores.json)."""
    for key, value in (("data.dataset", config.data.dataset), ("data.prompt", config.data.prompt)):
        if value is None:
            raise GptkitError(f"{key}: required by the instruct recipe (see experiments/instruct_medium.toml)")
    if len(config.data.split) != 3:
        raise GptkitError(f"data.split: the instruct recipe needs train, val and test shares, got {config.data.split}")
    run = setup_run(config)
    parts = split_dataset(registry.dataset.build(config.data.dataset, run.ctx), config.data.split, config.data.split_order)
    for name, part in parts.items():
        if not part:
            raise GptkitError(f"data.split: the {name} part of {config.data.dataset.params.get('path', 'the dataset')} is empty; give it a larger share")
    collator = registry.collator.build(config.data.collator, run.ctx)
    sampler = registry.sampler.build(config.generate.sampler, run.ctx)
    first_val = parts["val"][0].record

    def sample() -> str:
        """The original's epoch sample: the model's answer to the first validation instruction."""
        (prompt,) = prompts_of(run.ctx.prompt, [first_val])
        g = config.generate
        return prompt + generate(run.model, run.tokenizer, prompt, max_new_tokens=g.max_new_tokens, sampler=sampler, seed=config.run.seed + run.step)

    final = fit(run, parts["train"], parts["val"], collator, sample=sample)
    records = answer(run, [example.record for example in parts["test"]])  # on every rank: under fsdp each forward needs them all
    if not run.is_main:
        return final
    atomic_write_text(run.out_dir / "responses.json", json.dumps(records, indent=4, ensure_ascii=False) + "\n")
    scores, means = score_responses(records, config.eval.scorers, run.ctx)
    atomic_write_text(run.out_dir / "scores.json", json.dumps(scores, indent=2) + "\n")
    for name, result in scores.items():
        print(f"{name}: {result_line(result)}")
    return {**final, **means}


instruct_recipe.metric_keys = TRAINING_KEYS + ("exact_match", "rouge_l", "judge_score")


def prompts_of(prompt_format, records: list[dict]) -> list[str]:
    return [prompt_format(record)[0] for record in records]


def answer(run, records: list[dict]) -> list[dict]:
    """The records, each with `model_response`: the model's answer to its prompt, up to
    `[eval] max_new_tokens` tokens and stopped at end-of-text, generated `[eval] batch_size` at a
    time with the KV cache; greedy unless `[eval] sampler` names one. (The original prompts without
    the response header and strips the header the model writes; gptkit prompts with the header,
    as the model was trained, so only surrounding white space is stripped.)"""
    e = run.config.eval
    sampler = registry.sampler.build(e.sampler, run.ctx) if e.sampler is not None else "greedy"
    prompts = prompts_of(run.ctx.prompt, records)
    answered = []
    for start in tqdm(range(0, len(records), e.batch_size), desc="responses", unit="batch", disable=not run.is_main):
        batch = prompts[start : start + e.batch_size]
        texts = generate(run.model, run.tokenizer, batch, max_new_tokens=e.max_new_tokens, sampler=sampler, seed=run.config.run.seed)
        answered += [{**record, "model_response": text.strip()} for record, text in zip(records[start:], texts)]
    return answered


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


@hookimpl
def register_components(registry):
    registry.recipe.register("generate", generate_recipe, doc="Generate text from [generate] prompt with [generate] sampler.")
    registry.recipe.register("pretrain", pretrain_recipe, doc="Train [model] on [data] dataset: checkpoints, metrics.jsonl, loss.png, samples.")
    registry.recipe.register("instruct", instruct_recipe, doc="Instruction fine-tuning: train, then responses.json and scores.json on the test records.")
    registry.recipe.register("evaluate", evaluate_recipe, doc="Loss and perplexity of the model on [eval] text (sliding windows).")
