"""gptkit's greedy tokens equal transformers' generate(do_sample=False) on the same random weights,
read by the `hf` checkpoint loader from a folder that transformers itself wrote."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import gpt2_vocab_dir

import gptkit
from gptkit.generation import generate_ids
from gptkit.plugins import registry
from gptkit_plugins.sampling import greedy
from tinymodel import one_thread  # noqa: F401 (autouse fixture)

transformers = pytest.importorskip("transformers")

PROMPTS = [[464, 3290, 318, 257], [15496, 11, 995], [40, 1842, 345, 4673, 1110, 286, 262, 1578]]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    if "hf" not in registry.checkpoint.names():
        pytest.skip("no checkpoint loader named 'hf' is registered (the weights issue adds it)")
    config = transformers.GPT2Config(
        vocab_size=50257, n_positions=128, n_embd=64, n_layer=3, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than GPT-2's init, so that greedy choices are not near-ties
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("hf") / "gpt2-tiny"
    model.save_pretrained(folder, safe_serialization=True)
    vocabulary = gpt2_vocab_dir()  # as on the hub: vocab.json + merges.txt beside the weights
    if vocabulary is not None:
        shutil.copy(vocabulary / "encoder.json", folder / "vocab.json")
        shutil.copy(vocabulary / "vocab.bpe", folder / "merges.txt")
    return folder, model


def hf_greedy(model, prompt: list[int]) -> list[int]:
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), generation_config=config)
    return out[0, len(prompt) :].tolist()


def test_greedy_tokens_equal_transformers(hf_folder):
    folder, hf_model = hf_folder
    model, _ = gptkit.load_model(folder)
    completions = generate_ids(model, PROMPTS, max_new_tokens=NEW_TOKENS, sampler=greedy)
    for prompt, completion in zip(PROMPTS, completions):
        assert completion.new_ids == hf_greedy(hf_model, prompt)
