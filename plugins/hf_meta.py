"""What a Hugging Face model folder says beside its weights, as `gptkit export --format hf` writes it:
tokenizer_config.json, generation_config.json, the chat template and the model card (README.md).

When the model comes from a gptkit run (its run folder, or one of its checkpoints), the run's own
records fill them: config.toml (the prompt format, the default sampler, the base model, the data,
the training settings), metrics.jsonl (steps, final losses) and scores.json. Any other model gets
what can be known from the model itself.

The chat template renders gptkit's prompt format over chat messages. A user message is a record's
instruction (`content`); a record's input, when it has one, goes in the message's `input` key
(`{"role": "user", "content": instruction, "input": input}`), which the template puts where the
prompt format puts it. With `add_generation_prompt` a single user message renders exactly the
prompt gptkit builds for the record; an assistant message renders the response marker, its
content and end-of-text, as gptkit trains on them. Conversations of several turns render turn
after turn; only single-turn equality with gptkit's prompts is guaranteed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs

from gptkit.checkpoint import RUN_CONFIG, run_folder_of
from gptkit.config import read_toml
from gptkit.schema import Component
from gptkit.errors import GptkitError
from gptkit.files import read_text
from gptkit.interfaces import Context, PromptTemplate
from gptkit.metrics import read_metrics
from gptkit.plugins import registry
from gptkit.gpt2_files import ENDOFTEXT
from gptkit.model import GPTConfig
from gptkit.presets import resolve_preset

# gptkit's preset names -> the Hugging Face hub's copies of OpenAI's weights (MIT licence)
HUB_IDS = {
    "gpt2-124M": "openai-community/gpt2",
    "gpt2-355M": "openai-community/gpt2-medium",
    "gpt2-774M": "openai-community/gpt2-large",
    "gpt2-1558M": "openai-community/gpt2-xl",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@attrs.frozen
class RunRecord:
    """What a run folder recorded about the model exported from it."""

    folder: Path
    config: dict[str, Any]  # config.toml as written (the resolved config and its provenance)
    metrics: list[dict[str, Any]]
    scores: dict[str, Any]
    model: str  # the exported model folder, relative to the run folder (checkpoints/step-000123)


def run_record(origin: str | None) -> RunRecord | None:
    """The records of the run that the model folder `origin` belongs to; None outside a run."""
    run_dir = run_folder_of(origin) if origin else None
    if run_dir is None:
        return None
    metrics = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    scores = {}
    if (run_dir / "scores.json").is_file():
        try:
            scores = json.loads(read_text(run_dir / "scores.json"))
        except ValueError as exc:
            raise GptkitError(f"{run_dir / 'scores.json'}: not valid JSON ({exc})") from None
    return RunRecord(run_dir, read_toml(run_dir / RUN_CONFIG), metrics, scores, Path(origin).relative_to(run_dir).as_posix())


# --- tokenizer_config.json and the chat template ------------------------------------------------


def chat_template(fmt: PromptTemplate) -> str:
    """A Jinja chat template that renders `fmt`'s prompt over chat messages (see the module's doc).
    The format's texts are Jinja string literals written as JSON strings, whose escapes Jinja reads."""

    def text(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{- {text(fmt.before)} + message['content'] -}}}}"
        f"{{%- if message['input'] is defined and message['input'] -%}}{{{{- {text(fmt.input_separator)} + message['input'] -}}}}{{%- endif -%}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- {text(fmt.response_marker)} + message['content'] + eos_token -}}}}"
        "{%- else -%}"
        f"{{{{- raise_exception({text(f'the {fmt.name!r} prompt format has user and assistant messages only')}) -}}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- {text(fmt.response_marker)} -}}}}{{%- endif -%}}"
    )


def read_chat_template(folder: Path) -> str | None:
    """The chat template of a Hugging Face folder: chat_template.jinja (as transformers 5 saves it),
    else tokenizer_config.json's `chat_template`; None when it has none."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    return template if isinstance(template, str) else None


def prompt_of_chat_template(template: str | None) -> str | None:
    """The registered prompt format whose chat template `template` is (as `chat_template` writes
    it), so that a model exported and saved again by transformers still chats in its format."""
    if template is not None:
        for name in registry.prompt.names():
            fmt = registry.prompt.build(Component(name), Context())
            if isinstance(fmt, PromptTemplate) and chat_template(fmt) == template:
                return name
    return None


def tokenizer_config(context_length: int, fmt: Any) -> dict[str, Any]:
    """tokenizer_config.json for the GPT-2 tokenizer files beside it: end-of-text is also the
    padding, the longest input is the model's context, decoding keeps spaces as gptkit's does, and
    the prompt format, when it is a template, is the chat template."""
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": context_length,
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "add_prefix_space": False,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
    }
    if isinstance(fmt, PromptTemplate):
        config["chat_template"] = chat_template(fmt)
    return config


# --- generation_config.json ---------------------------------------------------------------------


def sampling_settings(sampler: dict[str, Any] | None) -> dict[str, Any] | None:
    """transformers' generate() settings for a gptkit sampler spec ({"name": ..., **params}); None
    for a sampler they cannot express. Both apply temperature, then top-k, then top-p; gptkit's
    top_k None (no limit) is transformers' 0, and temperature 0 is greedy."""
    name = (sampler or {}).get("name", "greedy")
    if name == "greedy" or (name in ("top-k", "top-p") and sampler.get("temperature", 1.0) == 0.0):
        return {"do_sample": False}
    if name not in ("top-k", "top-p"):
        return None
    settings = {"do_sample": True, "temperature": float(sampler.get("temperature", 1.0)), "top_k": sampler.get("top_k") or 0}
    if name == "top-p":
        settings["top_p"] = float(sampler.get("top_p", 0.9))
    return settings


def generation_config(eos_id: int | None, run: RunRecord | None) -> dict[str, Any]:
    """generation_config.json: end-of-text stops and pads; with a run, its `[generate]` sampler and
    max_new_tokens are the defaults, else greedy decoding, as `gptkit generate`'s default (and where
    the sampler has no transformers equivalent). `do_sample` is always written: transformers'
    pipeline samples with its own settings where the model's config leaves it unset."""
    config: dict[str, Any] = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id, "do_sample": False}
    if run is not None:
        generate = run.config.get("generate", {})
        config.update(sampling_settings(generate.get("sampler")) or {})
        if "max_new_tokens" in generate:
            config["max_new_tokens"] = generate["max_new_tokens"]
    return config


# --- the model card -----------------------------------------------------------------------------


def hub_id(name: str | None) -> str | None:
    """The Hugging Face hub id of a model name gptkit knows (a preset or a hub id); None for a local folder."""
    if not name:
        return None
    if resolve_preset(name):
        return HUB_IDS.get(resolve_preset(name))
    return name if HUB_ID.match(name) and not Path(name).exists() else None


def base_model_of(run: RunRecord) -> tuple[str | None, str]:
    """(hub id or None, words) of the model a run started from."""
    spec = run.config.get("init", {}).get("checkpoint")
    if not spec:
        return None, "none: trained from a random initialisation"
    named = spec.get("model") or spec.get("path") or ""
    adapter = run.config.get("init", {}).get("adapter")
    words = f"`{named}` (checkpoint loader `{spec.get('name')}`)" + (f" with the LoRA adapter `{adapter}` merged in" if adapter else "")
    return hub_id(spec.get("model")), words


def component_words(spec: dict[str, Any] | None) -> str:
    """`name` (key = value, ...) of a component spec, paths and URLs cut to their file name."""
    if not spec:
        return "none"
    params = [f"{k} = {Path(v).name if k == 'path' and isinstance(v, str) else v}" for k, v in spec.items() if k != "name"]
    return f"`{spec.get('name')}`" + (f" ({', '.join(params)})" if params else "")


def score_means(scores: dict[str, Any]) -> dict[str, tuple[float, Any]]:
    """{scorer: (mean, records scored)} for the scorers that produced a number."""
    return {name: (float(r["mean"]), r.get("n")) for name, r in scores.items() if isinstance(r, dict) and isinstance(r.get("mean"), (int, float))}


def card_metadata(config: GPTConfig, run: RunRecord | None, origin: str | None) -> dict[str, Any]:
    """The card's YAML metadata: the hub's keys (library, pipeline, base model, tags, model-index)."""
    base = base_model_of(run)[0] if run else hub_id(origin)
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["gptkit", "gpt2"]}
    if base:
        meta["base_model"] = base
    if base in HUB_IDS.values():
        meta["license"] = "mit"  # OpenAI's GPT-2 weights' licence, which models derived from them keep
    means = score_means(run.scores) if run else {}
    if means:
        dataset = run.config.get("data", {}).get("dataset") or {}
        data_name = Path(str(dataset.get("path", dataset.get("name", "data")))).name
        meta["model-index"] = [
            {
                "name": run.config.get("run", {}).get("name", run.folder.name),
                "results": [
                    {
                        "task": {"type": "text-generation", "name": "Text Generation"},
                        "dataset": {"type": str(dataset.get("name", "data")), "name": data_name, "split": "test"},
                        "metrics": [{"type": name, "name": name, "value": mean} for name, (mean, _) in means.items()],
                    }
                ],
            }
        ]
    return meta


def model_card(config: GPTConfig, n_parameters: int, run: RunRecord | None, origin: str | None, has_chat_template: bool) -> str:
    """README.md: YAML metadata (flow style: each value is JSON, which YAML reads) and what the run
    recorded: base model, data, prompt format, training, final losses and scores."""
    meta = card_metadata(config, run, origin)
    lines = ["---", *(f"{key}: {json.dumps(value, ensure_ascii=False)}" for key, value in meta.items()), "---", ""]
    sizes = (
        f"n_layers {config.n_layers}, emb_dim {config.emb_dim}, n_heads {config.n_heads}, context_length {config.context_length}, "
        f"vocab_size {config.vocab_size}: {n_parameters / 1e6:.1f}M parameters"
    )
    if run is None:
        lines += [f"# {Path(origin).name if origin else 'GPT-2'}", "", f"A GPT-2 model (`{origin}`) exported by gptkit (`gptkit export --format hf`).", ""]
        table = [("model", sizes)]
    else:
        c = run.config
        train, data = c.get("train", {}), c.get("data", {})
        evals = [r for r in run.metrics if "val_loss" in r]
        last = run.metrics[-1] if run.metrics else {}
        lines += [f"# {c.get('run', {}).get('name', run.folder.name)}", "", f"A GPT-2 model trained with gptkit (recipe `{c.get('run', {}).get('recipe')}`), exported from `{run.model}` of its run by `gptkit export --format hf`.", ""]
        table = [
            ("base model", base_model_of(run)[1]),
            ("data", f"{component_words(data.get('dataset'))}, split {data.get('split')}"),
            ("prompt format", component_words(data.get("prompt")) + (" (the chat template)" if has_chat_template else "")),
            ("fine-tuning", component_words(train.get("finetune"))),
            ("training", f"{last.get('step', 0)} steps, {last.get('epoch', 0)} epochs, {last.get('tokens_seen', 0):,} tokens seen; batch {train.get('batch_size')}, lr {train.get('lr')}, precision {c.get('provenance', {}).get('precision', train.get('precision'))}"),
            ("final losses", f"train {evals[-1]['train_loss']:.4f}, val {evals[-1]['val_loss']:.4f} (step {evals[-1]['step']})" if evals else "no evaluation recorded"),
            ("default sampler", component_words(c.get("generate", {}).get("sampler"))),
            ("model", sizes),
        ]
    lines += ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in table), ""]
    means = score_means(run.scores) if run else {}
    if means:
        lines += ["## Scores", "", "On the held-out test records (`scores.json` of the run):", "", "| scorer | mean | records |", "|---|---|---|"]
        lines += [f"| {name} | {mean:.4f} | {n} |" for name, (mean, n) in means.items()] + [""]
    lines += ["## Use", "", "```python", "from transformers import pipeline", "", 'generate = pipeline("text-generation", model="PATH/TO/THIS/FOLDER")']
    if has_chat_template:
        lines += ['print(generate([{"role": "user", "content": "Name the capital of France."}])[0]["generated_text"][-1]["content"])']
    else:
        lines += ['print(generate("Every effort moves you")[0]["generated_text"])']
    lines += ["```", ""]
    if has_chat_template:
        lines += [
            "The chat template is the prompt format gptkit trained with: a user message holds the instruction, and a record's",
            'input, if any, goes in the message\'s `input` key: `{"role": "user", "content": instruction, "input": input}`.',
            "",
        ]
    return "\n".join(lines)
