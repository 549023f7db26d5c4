"""The `instruct` recipe: instruction fine-tuning as the original ch07 script does it, then the model's
answers to the held-out records (responses.json) and their scores (scores.json)."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from gptkit.data import split_dataset
from gptkit.errors import GptkitError
from gptkit.evaluation import result_line, score_responses
from gptkit.files import atomic_write_text, read_json
from gptkit.generation import generate
from gptkit.plugins import registry
from gptkit.recipes.pretrain import TRAINING_KEYS
from gptkit.runs import setup_run
from gptkit.training import fit


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


def read_responses(path: Path) -> list[dict]:
    """The records of a responses.json as this recipe writes it, each with string `output` and
    `model_response`; an error naming the file and record otherwise."""
    records = read_json(path)
    if not isinstance(records, list):
        raise GptkitError(f"{path}: expected a JSON array of records, as responses.json holds")
    for i, record in enumerate(records):
        missing = [key for key in ("output", "model_response") if not isinstance(record, dict) or not isinstance(record.get(key), str)]
        if missing:
            raise GptkitError(f"{path}: record {i} has no string {' or '.join(missing)}")
    return records


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
