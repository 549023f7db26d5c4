"""Loading OpenAI and HF GPT-2 folders (the committed tiny checkpoint, written by TensorFlow from a
random HF model): logits equal transformers', export round-trips, `[init] checkpoint`, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from gpt2_fixtures import (HF_TINY, OPENAI_TINY, SHARED_GPT2, copy_folder, hf_logits, random_hf_model, write_hf_folder,
                           write_openai_folder)
from gptkit.cli import cli
from gptkit.errors import GptkitError
from gptkit.sources import load_model, load_source

IDS = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference():
    from transformers import GPT2LMHeadModel

    return hf_logits(GPT2LMHeadModel.from_pretrained(HF_TINY).eval(), IDS)


def gptkit_logits(source) -> torch.Tensor:
    model, _ = load_model(source)
    with torch.no_grad():
        return model(IDS)


def gptkit_logits_of(loaded) -> torch.Tensor:
    from gptkit.model import GPT

    model = GPT(loaded.model_config)
    model.load_state_dict(loaded.state_dict)
    with torch.no_grad():
        return model.eval()(IDS)


@pytest.mark.parametrize("source", [OPENAI_TINY, HF_TINY], ids=["openai", "hf"])
def test_logits_match_transformers(source, reference):
    torch.testing.assert_close(gptkit_logits(source), reference, atol=1e-4, rtol=0)


def test_openai_folder_reads_without_tensorflow(reference):
    """gptkit's own tensor-bundle reader gives the same model as TensorFlow would."""
    from gptkit_plugins.openai_tf import load_folder

    torch.testing.assert_close(gptkit_logits_of(load_folder(OPENAI_TINY, reader="python")), reference, atol=1e-4, rtol=0)


def test_openai_folder_fixture_writes_without_tensorflow(tmp_path, monkeypatch):
    """Tests that serve OpenAI's layout (test_instruct, test_readme) write it without TensorFlow; what
    they write loads as the HF model it came from (TensorFlow reads it too: test_tf_bundle.py)."""
    from gptkit_plugins.openai_tf import load_folder

    model = random_hf_model(97, 16, 16, 2, 2, seed=11)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails, as where it is not installed
        folder = write_openai_folder(model, tmp_path / "124M", writer="python")
    loaded = load_folder(folder, reader="python")
    torch.testing.assert_close(gptkit_logits_of(loaded), hf_logits(model, IDS), atol=1e-4, rtol=0)


def test_openai_folder_gives_gpt2_config_and_its_tokenizer():
    loaded = load_source(OPENAI_TINY)
    c = loaded.model_config
    assert (c.vocab_size, c.context_length, c.emb_dim, c.n_heads, c.n_layers) == (97, 16, 16, 2, 2)
    assert c.qkv_bias and c.tie_weights and c.feedforward.name == "gelu-mlp"
    assert loaded.tokenizer.encode("Every effort moves you") == [270, 276, 263, 266]  # Every, Ġeffort, Ġmoves, Ġyou
    assert loaded.state_dict["head.weight"] is loaded.state_dict["tok_emb.weight"]


@pytest.mark.parametrize("source", [OPENAI_TINY, HF_TINY], ids=["openai", "hf"])
def test_export_to_hf_opens_in_transformers_with_the_same_logits(source, reference, tmp_path):
    from transformers import GPT2LMHeadModel

    result = CliRunner().invoke(cli, ["export", str(source), str(tmp_path / "out"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json",
    ]
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(hf_logits(exported, IDS), reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(gptkit_logits(tmp_path / "out"), reference, atol=1e-4, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


def test_export_untied_model_keeps_its_head(tmp_path):
    from transformers import GPT2LMHeadModel

    model = random_hf_model(53, 8, 8, 2, 1, seed=3, tie=False)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    write_hf_folder(model, tmp_path / "src")
    loaded = load_source(tmp_path / "src")
    assert not loaded.model_config.tie_weights
    assert CliRunner().invoke(cli, ["export", str(tmp_path / "src"), str(tmp_path / "out")]).exit_code == 0
    ids = IDS[:, :8] % 53
    torch.testing.assert_close(hf_logits(GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval(), ids), hf_logits(model, ids), atol=1e-4, rtol=0)


def test_export_to_gptkit_format_and_back(tmp_path, reference):
    result = CliRunner().invoke(cli, ["export", str(OPENAI_TINY), str(tmp_path / "native"), "--format", "gptkit"])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(gptkit_logits(tmp_path / "native"), reference, atol=1e-4, rtol=0)
    from gptkit.config import Component
    from gptkit.interfaces import Context
    from gptkit.plugins import registry

    loader = registry.checkpoint.build(Component("gptkit", {"path": str(tmp_path / "native")}), Context())
    assert loader.load().model_config == load_source(tmp_path / "native").model_config


def test_export_refuses_a_non_empty_folder_and_unknown_formats(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["export", str(OPENAI_TINY), str(tmp_path / "full")])
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(cli, ["export", str(OPENAI_TINY), str(tmp_path / "x"), "--format", "onnx"])
    assert result.exit_code == 2 and "unknown checkpoint 'onnx'" in result.output


# --- [init] checkpoint ----------------------------------------------------------------------------


def write_experiment(tmp_path: Path, model_lines: str = "") -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(
        f"""
[run]
name = "init"
recipe = "generate"
device = "cpu"
out_dir = "{(tmp_path / 'run').as_posix()}"

[model]
{model_lines}

[init]
checkpoint = {{ name = "hf", model = "{(tmp_path / 'hf').as_posix()}" }}

[data]
tokenizer = {{ name = "bytes" }}

[generate]
max_new_tokens = 3
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def hf_gpt2_vocab(tmp_path):
    """A tiny model whose vocabulary has GPT-2's 50,257 ids, so its tokenizer fits."""
    model = random_hf_model(50257, 16, 8, 2, 1, seed=5)
    write_hf_folder(model, tmp_path / "hf", real_vocab=True)
    return model


def test_init_checkpoint_gives_the_sizes_and_weights(tmp_path, hf_gpt2_vocab):
    import gptkit
    from gptkit.interfaces import Context
    from gptkit.runs import build_model

    config = gptkit.load_config(write_experiment(tmp_path, "drop_rate = 0.0"))
    ctx = Context()
    model = build_model(config, ctx)
    assert (model.config.vocab_size, model.config.emb_dim, model.config.n_layers) == (50257, 8, 1)
    assert ctx.tokenizer.name == "gpt2" and ctx.tokenizer.vocab_size == 50257
    ids = torch.tensor([[1, 2, 3, 50256]])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), hf_logits(hf_gpt2_vocab, ids), atol=1e-4, rtol=0)
    if not SHARED_GPT2.is_dir():
        pytest.skip("generating needs GPT-2's vocabulary (ids past the tiny test vocabulary cannot be decoded)")
    assert gptkit.run(config)["new_tokens"] == 3
    assert (tmp_path / "run" / "samples.txt").read_text(encoding="utf-8").startswith("Every effort moves you")


def test_init_checkpoint_tokenizer_needs_no_tiktoken(tmp_path, hf_gpt2_vocab, monkeypatch):
    """Offline, a checkpoint's own vocabulary is enough: [data] tokenizer (tiktoken) is not consulted."""
    import tiktoken

    import gptkit
    from gptkit.runs import build_context, build_model

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    config = gptkit.load_config(write_experiment(tmp_path, "drop_rate = 0.0"))
    ctx = build_context(config, torch.device("cpu"))
    assert ctx.tokenizer is None
    build_model(config, ctx)
    assert ctx.tokenizer.vocab_size == 50257


@pytest.mark.parametrize(
    "model_lines, message",
    [
        ("emb_dim = 16", "model.emb_dim = 16 but the checkpoint has 8"),
        ('preset = "gpt2-124M"', "model.emb_dim = 768 but the checkpoint has 8"),
        ("qkv_bias = false", "model.qkv_bias = false but the checkpoint has true"),
    ],
)
def test_init_checkpoint_sizes_that_disagree_are_an_error(tmp_path, hf_gpt2_vocab, model_lines, message):
    import gptkit

    with pytest.raises(GptkitError, match=message):
        gptkit.run(gptkit.load_config(write_experiment(tmp_path, model_lines)))


def test_gpt2_generate_experiment_validates():
    root = Path(__file__).resolve().parents[1]
    for size in ("gpt2-124M", "gpt2-medium", "gpt2-1558M"):
        result = CliRunner().invoke(cli, ["config", "validate", str(root / "experiments/gpt2_generate.toml"), f"init.checkpoint.model={size}"])
        assert result.exit_code == 0, result.output


# --- bad input: each error names the file or tensor ------------------------------------------------


READERS = ["python"] + (["tensorflow"] if importlib.util.find_spec("tensorflow") else [])


@pytest.fixture(params=READERS)
def reader(request, monkeypatch):
    """Run an OpenAI-folder test with each checkpoint reader this machine has."""
    from gptkit_plugins import openai_tf

    real = openai_tf.pick_reader
    monkeypatch.setattr(openai_tf, "pick_reader", lambda kind: real(request.param if kind == "auto" else kind))
    return request.param


def expect_error(source, *fragments):
    with pytest.raises(GptkitError) as info:
        load_source(source)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe", "hparams.json", "model.ckpt.index", "model.ckpt.data-00000-of-00001"])
def test_openai_missing_file(reader, tmp_path, name):
    folder = copy_folder(OPENAI_TINY, tmp_path / "m")
    (folder / name).unlink()
    expect_error(folder, str(folder / name), "missing")


def test_openai_truncated_shard(reader, tmp_path):
    folder = copy_folder(OPENAI_TINY, tmp_path / "m")
    data = folder / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-100])
    expect_error(folder, str(folder / "model.ckpt"))


def test_openai_corrupted_shard(reader, tmp_path):
    folder = copy_folder(OPENAI_TINY, tmp_path / "m")
    data = folder / "model.ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 0xFF
    data.write_bytes(bytes(raw))
    expect_error(folder, str(folder / "model.ckpt"))


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("n_embd", 32, "model/wte [97, 16] (hparams.json implies [97, 32])"),
        ("n_layer", 3, "missing tensors model/h2/"),
        ("n_layer", 1, "unexpected tensors model/h1/"),
        ("n_vocab", "97", "n_vocab must be a positive integer"),
        ("n_head", 3, "n_embd = 16 is not divisible by n_head = 3"),
    ],
)
def test_openai_hparams_that_disagree(reader, tmp_path, key, value, fragment):
    folder = copy_folder(OPENAI_TINY, tmp_path / "m")
    hparams = json.loads((folder / "hparams.json").read_text())
    (folder / "hparams.json").write_text(json.dumps({**hparams, key: value}))
    expect_error(folder, fragment)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "vocab.json", "merges.txt"])
def test_hf_missing_file(tmp_path, name):
    folder = copy_folder(HF_TINY, tmp_path / "m")
    (folder / name).unlink()
    expect_error(folder, str(folder / name), "missing")


def test_hf_truncated_weights(tmp_path):
    folder = copy_folder(HF_TINY, tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-500])
    expect_error(folder, str(weights), "corrupt")


def test_hf_config_that_disagrees_with_shapes(tmp_path):
    folder = copy_folder(HF_TINY, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_positions": 32}))
    expect_error(folder, str(folder / "model.safetensors"), "wpe.weight [16, 16] (config.json implies [32, 16])")


@pytest.mark.parametrize(
    "change, fragment",
    [
        ("drop", "missing tensor h.1.mlp.c_fc.bias"),
        ("extra", "unexpected tensor transformer.h.9.attn.c_attn.lora"),
    ],
)
def test_hf_tensor_missing_or_extra(tmp_path, change, fragment):
    folder = copy_folder(HF_TINY, tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    if change == "drop":
        del tensors["transformer.h.1.mlp.c_fc.bias"]
    else:
        tensors["transformer.h.9.attn.c_attn.lora"] = torch.zeros(2)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    expect_error(folder, fragment.replace("transformer.", ""))


def test_hf_activation_gptkit_cannot_match(tmp_path):
    folder = copy_folder(HF_TINY, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    expect_error(folder, str(folder / "config.json"), "activation_function 'relu'")


def test_hub_id_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never contact the hub from tests
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    expect_error("openai-community/gpt2-does-not-exist", "openai-community/gpt2-does-not-exist: could not download from the Hugging Face hub")


def test_init_from_a_gptkit_model_folder(tmp_path, reference):
    from gptkit.config import Component
    from gptkit.interfaces import Context
    from gptkit.plugins import registry

    assert CliRunner().invoke(cli, ["export", str(HF_TINY), str(tmp_path / "native"), "--format", "gptkit"]).exit_code == 0
    loader = registry.checkpoint.build(Component("gptkit", {"path": str(tmp_path / "native")}), Context())
    assert loader.can_load(str(tmp_path / "native")) and not loader.can_load(str(HF_TINY))
    torch.testing.assert_close(gptkit_logits_of(loader.load()), reference, atol=1e-4, rtol=0)
    with pytest.raises(GptkitError, match="needs a path"):
        registry.checkpoint.build(Component("gptkit"), Context()).load()
