"""Hugging Face folders in and out, checked with transformers and huggingface_hub: a folder that
transformers saved (tokenizer.json alone, sharded weights) reads back as the same model, and the
folder `gptkit export --format hf` writes (tokenizer and generation configs, the chat template, the
model card) opens without warnings and renders gptkit's prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import ROOT
from gpt2_fixtures import no_warnings
from gptkit import checkpoint
from gptkit.cli import cli
from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.plugins import registry
from gptkit.sources import load_source
from gptkit_plugins.hf_meta import chat_template
from test_finetune import base_model_folder
from test_training import rows

pytest.importorskip("transformers")
RECORDS = json.loads((ROOT / "experiments" / "data" / "instruction-data.json").read_text(encoding="utf-8"))[:20]


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result


# --- Hugging Face folders in ----------------------------------------------------------------------


@pytest.fixture
def gpt2_model_folder(tmp_path, gpt2_vocab) -> Path:
    """A gptkit model folder: a small random GPT over GPT-2's vocabulary, in the alpaca prompt format,
    with weights large enough that greedy tokens are far from ties."""
    from gptkit.model import GPT, GPTConfig
    from gptkit_plugins.tokenizers import gpt2_from_files

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=256, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return checkpoint.save_model(tmp_path / "gptkit-model", model, gpt2_from_files(gpt2_vocab), prompt=Component("alpaca"))


def greedy_json(source: Path) -> dict:
    return json.loads(invoke("generate", str(source), "--prompt", "Every effort moves you", "--max-new-tokens", "12", "--json").stdout)


def test_export_then_transformers_save_pretrained_then_gptkit_generate(tmp_path, gpt2_model_folder):
    """transformers 5 writes tokenizer.json alone (no vocab.json, merges.txt); sharded weights too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = greedy_json(gpt2_model_folder)
    invoke("export", str(gpt2_model_folder), str(tmp_path / "hf"))
    AutoModelForCausalLM.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "saved", max_shard_size="2MB")
    AutoTokenizer.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "saved")
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert "vocab.json" not in saved and "tokenizer.json" in saved and "model.safetensors.index.json" in saved
    assert len([n for n in saved if n.startswith("model-")]) > 1
    after = greedy_json(tmp_path / "saved")
    assert after["token_ids"] == before["token_ids"] and after["text"] == before["text"] and after["new_tokens"] == 12
    assert load_source(tmp_path / "saved").prompt == Component("alpaca")  # the chat template brings the prompt format back


def test_tokenizer_json_alone_reads_as_the_gpt2_vocabulary(tmp_path, gpt2_vocab):
    from gptkit_plugins.tokenizers import gpt2_from_files
    from transformers import GPT2Tokenizer

    GPT2Tokenizer(str(gpt2_vocab / "encoder.json"), str(gpt2_vocab / "vocab.bpe")).save_pretrained(tmp_path / "tok")
    assert not (tmp_path / "tok" / "vocab.json").exists()
    ours, theirs = gpt2_from_files(tmp_path / "tok"), gpt2_from_files(gpt2_vocab)
    text = "Héllo, world!  It's 2024<|endoftext|>\n\tdone 😀"
    assert ours.encode(text) == theirs.encode(text) and ours.eos_id == 50256 and ours.vocab_size == 50257
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": {"type": "BertPreTokenizer"}}))
    with pytest.raises(GptkitError, match=r"tok: not a readable GPT-2 vocabulary: ValueError: not a byte-level BPE \(GPT-2's kind\): model type 'WordPiece'"):
        gpt2_from_files(tmp_path / "tok")


def test_bytes_tokenizer_exports_as_a_byte_level_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    invoke("export", str(base_model_folder(tmp_path)), str(tmp_path / "hf"))
    theirs, ours = AutoTokenizer.from_pretrained(tmp_path / "hf"), registry.tokenizer.build(Component("bytes"), Context())
    text = "Héllo wörld 😀<|endoftext|> end"
    assert theirs(text).input_ids == ours.encode(text) and theirs.decode(ours.encode(text)) == text
    back = load_source(tmp_path / "hf").tokenizer  # and back into gptkit
    assert back.encode(text) == ours.encode(text) and (back.eos_id, back.vocab_size) == (256, 257)


# --- Hugging Face folders out ---------------------------------------------------------------------


@pytest.fixture
def instruct_run(tmp_path, gpt2_vocab) -> Path:
    """A run of the shipped instruct_test experiment (2 steps), with a top-k default sampler."""
    invoke(
        "run", str(ROOT / "experiments" / "instruct_test.toml"), f"run.out_dir={tmp_path / 'run'}", f"data.tokenizer.path={gpt2_vocab}",
        "train.max_steps=2", "generate.sampler={name = 'top-k', top_k = 5, temperature = 0.7}", "generate.max_new_tokens=7",
    )
    return tmp_path / "run"


def test_exported_run_opens_in_transformers_without_warnings_and_chats_in_its_format(tmp_path, instruct_run):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

    invoke("export", str(instruct_run), str(tmp_path / "hf"))
    with no_warnings():
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
        generator = pipeline("text-generation", model=str(tmp_path / "hf"))
        answer = generator([{"role": "user", "content": RECORDS[0]["instruction"]}], do_sample=False, max_new_tokens=3)
        card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert answer[0]["generated_text"][-1]["role"] == "assistant"

    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["dtype"] == "float32" and "torch_dtype" not in config and model.config.n_positions == 120
    assert (tokenizer.model_max_length, tokenizer.eos_token_id, tokenizer.pad_token_id) == (120, 50256, 50256)
    generation = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert (generation.do_sample, generation.top_k, generation.temperature, generation.max_new_tokens, generation.eos_token_id) == (True, 5, 0.7, 7, 50256)

    alpaca = registry.prompt.build(Component("alpaca"), Context())
    assert sum(bool(r["input"]) for r in RECORDS) >= 5
    for record in RECORDS:
        message = {"role": "user", "content": record["instruction"], "input": record["input"]}
        prompt, response = alpaca(record)
        assert tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True) == prompt
        assert tokenizer.apply_chat_template([message, {"role": "assistant", "content": response}], tokenize=False) == prompt + response + "<|endoftext|>"

    scores = json.loads((instruct_run / "scores.json").read_text())
    results = {e.metric_type: e.metric_value for e in card.data.eval_results}
    assert results == {name: r["mean"] for name, r in scores.items()} and set(results) == {"exact-match", "rouge-l"}
    assert card.data.model_name == "instruct-test" and card.data.library_name == "transformers" and "gptkit" in card.data.tags
    final = [r for r in rows(instruct_run) if "val_loss" in r][-1]
    assert f"train {final['train_loss']:.4f}, val {final['val_loss']:.4f} (step 2)" in card.text
    assert "instruction-data.json" in card.text and "`alpaca`" in card.text and "checkpoints/step-000002" in card.text


@pytest.mark.parametrize("name", ["alpaca", "phi3", "compact"])
def test_chat_template_renders_gptkit_prompts_on_20_records(name, gpt2_vocab):
    from transformers import GPT2Tokenizer

    fmt = registry.prompt.build(Component(name), Context())
    tokenizer = GPT2Tokenizer(str(gpt2_vocab / "encoder.json"), str(gpt2_vocab / "vocab.bpe"))
    for record in RECORDS:
        messages = [{"role": "user", "content": record["instruction"], "input": record["input"]}]
        prompt, response = fmt(record)
        assert tokenizer.apply_chat_template(messages, chat_template=chat_template(fmt), tokenize=False, add_generation_prompt=True) == prompt
        messages.append({"role": "assistant", "content": response})
        assert tokenizer.apply_chat_template(messages, chat_template=chat_template(fmt), tokenize=False) == prompt + response + "<|endoftext|>"


def test_export_of_a_model_name_writes_what_can_be_known(tmp_path, gpt2_model_folder):
    """Not a run: the card names the source; greedy decoding (gptkit's default) is the generation default."""
    from huggingface_hub import ModelCard
    from transformers import GenerationConfig

    invoke("export", str(gpt2_model_folder), str(tmp_path / "hf"))
    with no_warnings():
        card = ModelCard.load(tmp_path / "hf" / "README.md")
        generation = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert generation.do_sample is False and generation.max_new_tokens is None
    assert card.data.base_model is None and card.data.eval_results is None and str(gpt2_model_folder) in card.text
    assert "chat_template" in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
