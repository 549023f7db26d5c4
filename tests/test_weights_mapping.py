"""Name and shape mappings of the pretrained-weight loaders for every real GPT-2 size, on meta tensors
(no memory), how SOURCE names route to loaders, and BPE merges recovered from tiktoken ranks."""

from __future__ import annotations

import pytest
import torch

from gpt2_fixtures import HF_TINY, MERGES, OPENAI_TINY, SHARED_GPT2, write_vocab
from gptkit.config import Component
from gptkit.interfaces import CheckpointLoader, Context
from gptkit.model import GPT
from gptkit.presets import PRESETS
from gptkit.plugins import registry
from gptkit_plugins import hf, openai_tf

def meta_state(config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_openai_mapping_fits_every_real_size(preset):
    p = PRESETS[preset]
    hparams = dict(n_vocab=p["vocab_size"], n_ctx=p["context_length"], n_embd=p["emb_dim"], n_head=p["n_heads"], n_layer=p["n_layers"])
    shapes = openai_tf.expected_shapes(hparams)
    assert len(shapes) == 4 + 12 * p["n_layers"]
    assert shapes["model/h0/attn/c_attn/w"] == (1, p["emb_dim"], 3 * p["emb_dim"])
    variables = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
    state = openai_tf.to_gptkit(variables, p["n_layers"])
    config = openai_tf.config_from_hparams(hparams)
    assert {k: tuple(v.shape) for k, v in state.items()} == meta_state(config)
    assert config.qkv_bias and config.tie_weights and config.norm.params["eps"] == 1e-5


@pytest.mark.parametrize("preset", list(PRESETS))
def test_hf_mapping_fits_every_real_size(preset):
    from transformers import GPT2Config, GPT2LMHeadModel

    p = PRESETS[preset]
    hf_config = GPT2Config(vocab_size=p["vocab_size"], n_positions=p["context_length"], n_embd=p["emb_dim"],
                           n_head=p["n_heads"], n_layer=p["n_layers"])
    with torch.device("meta"):
        reference = GPT2LMHeadModel(hf_config)
    stored = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items()
              if k != "lm_head.weight" and not hf.IGNORED.search(k)}
    config = openai_tf.config_from_hparams(dict(n_vocab=p["vocab_size"], n_ctx=p["context_length"],
                                                n_embd=p["emb_dim"], n_head=p["n_heads"], n_layer=p["n_layers"]))
    assert {k: tuple(v.shape) for k, v in stored.items()} == hf.hf_shapes(config)
    state = hf.to_gptkit(stored, config)
    assert {k: tuple(v.shape) for k, v in state.items()} == meta_state(config)
    exported = hf.to_hf(state, config)
    assert {k: tuple(v.shape) for k, v in exported.items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items() if k != "lm_head.weight" and not hf.IGNORED.search(k)
    }


def build(name: str):
    return registry.checkpoint.build(Component(name), Context())


def test_loaders_meet_the_contract_with_default_params():
    for name in ("openai-tf", "hf", "gptkit"):
        assert isinstance(build(name), CheckpointLoader)


@pytest.mark.parametrize(
    "source, claimed_by",
    [
        ("gpt2-124M", "openai-tf"), ("gpt2", "openai-tf"), ("gpt2-medium", "openai-tf"), ("355M", "openai-tf"),
        ("gpt2-xl", "openai-tf"), ("openai-community/gpt2", "hf"), ("openai-community/gpt2-medium", "hf"),
        (str(OPENAI_TINY), "openai-tf"), (str(HF_TINY), "hf"), ("gpt3", None), ("no/such/folder/here", None),
    ],
)
def test_sources_route_to_one_loader(source, claimed_by):
    claimed = [name for name in ("gptkit", "hf", "openai-tf") if build(name).can_load(source)]
    assert claimed == ([claimed_by] if claimed_by else [])


def test_merges_recovered_from_ranks_of_a_tiny_vocabulary(tmp_path):
    from gptkit_plugins.tokenizers import gpt2_from_files

    write_vocab(tmp_path)
    tokenizer = gpt2_from_files(tmp_path)
    tokenizer.source = None  # force recovery from the ranks
    out = tmp_path / "out"
    out.mkdir()
    assert hf.write_vocab_files(tokenizer, out)
    assert (out / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] == [f"{a} {b}" for a, b in MERGES]
    again = gpt2_from_files(out)
    text = "Every effort moves you the<|endoftext|>"
    assert again.encode(text) == tokenizer.encode(text)


def test_merges_recovered_from_ranks_of_gpt2():
    if not (SHARED_GPT2 / "vocab.bpe").is_file():
        pytest.skip(f"GPT-2 vocabulary files not found in {SHARED_GPT2}")
    from gptkit.gpt2_files import bpe_ranks, read_vocab_files

    ranks, _ = bpe_ranks(*read_vocab_files(SHARED_GPT2 / "encoder.json", SHARED_GPT2 / "vocab.bpe"))
    from gptkit.gpt2_files import data_gym_byte_decoder

    char_of = {b: c for c, b in data_gym_byte_decoder().items()}
    recovered = ["".join(char_of[x] for x in a) + " " + "".join(char_of[x] for x in b) for a, b in hf.merges_from_ranks(ranks)]
    expected = [line for line in (SHARED_GPT2 / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    assert recovered == expected
