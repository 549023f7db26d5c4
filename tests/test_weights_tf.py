"""OpenAI checkpoints written by TensorFlow itself from random-weight HF GPT-2 models of several shapes:
gptkit's logits equal transformers', with either checkpoint reader; both readers return identical
tensors; missing or extra tensors are named; the gpt2_generate experiment runs end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

tf = pytest.importorskip("tensorflow")

from gpt2_fixtures import SHARED_GPT2, hf_logits, random_hf_model, serve_folder, write_hf_folder, write_openai_folder  # noqa: E402
from gptkit.cli import cli  # noqa: E402
from gptkit.errors import GptkitError  # noqa: E402
from gptkit.model import GPT  # noqa: E402
from gptkit_plugins import openai_tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # n_vocab, n_ctx, n_embd, n_head, n_layer
    "v97-c16-d16-h2-l2": (97, 16, 16, 2, 2),
    "v211-c24-d24-h3-l1": (211, 24, 24, 3, 1),
    "v50257-c32-d32-h4-l3": (50257, 32, 32, 4, 3),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def written(request, tmp_path_factory):
    shape = SHAPES[request.param]
    model = random_hf_model(*shape, seed=sum(shape))
    root = tmp_path_factory.mktemp(request.param)
    return model, write_openai_folder(model, root / "openai"), write_hf_folder(model, root / "hf")


def gptkit_logits(loaded, ids):
    model = GPT(loaded.model_config)
    model.load_state_dict(loaded.state_dict)
    with torch.no_grad():
        return model.eval()(ids)


@pytest.mark.parametrize("reader", ["tensorflow", "python"])
def test_logits_match_transformers(written, reader):
    model, openai_dir, hf_dir = written
    c = model.config
    ids = torch.randint(0, c.vocab_size, (2, c.n_positions), generator=torch.Generator().manual_seed(1))
    expected = hf_logits(model, ids)
    torch.testing.assert_close(gptkit_logits(openai_tf.load_folder(openai_dir, reader), ids), expected, atol=1e-4, rtol=0)
    from gptkit_plugins import hf

    torch.testing.assert_close(gptkit_logits(hf.load_folder(hf_dir), ids), expected, atol=1e-4, rtol=0)


def test_export_to_hf_gives_the_same_logits(written, tmp_path):
    from transformers import GPT2LMHeadModel

    model, openai_dir, _ = written
    result = CliRunner().invoke(cli, ["export", str(openai_dir), str(tmp_path / "hf"), "--format", "hf"])
    assert result.exit_code == 0, result.output
    ids = torch.randint(0, model.config.vocab_size, (1, model.config.n_positions), generator=torch.Generator().manual_seed(2))
    exported = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf_logits(exported, ids), hf_logits(model, ids), atol=1e-4, rtol=0)


def test_both_readers_return_identical_tensors(written):
    _, openai_dir, _ = written
    by_tf = openai_tf.CheckpointReader(openai_dir / "model.ckpt", "tensorflow")
    by_python = openai_tf.CheckpointReader(openai_dir / "model.ckpt", "python")
    assert by_tf.shapes() == by_python.shapes()
    for name in by_tf.shapes():
        a, b = by_tf.read(name), by_python.read(name)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b), name


@pytest.mark.parametrize("reader", ["tensorflow", "python"])
@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(drop=["model/h1/mlp/c_fc/b"]), "missing tensor model/h1/mlp/c_fc/b"),
        (dict(extra={"model/h0/attn/c_attn/lora": np.zeros(3, np.float32)}), "unexpected tensor model/h0/attn/c_attn/lora"),
        (dict(drop=["model/wpe"], extra={"model/wpe_": np.zeros((16, 16), np.float32)}), "missing tensor model/wpe; unexpected tensor model/wpe_"),
    ],
)
def test_missing_or_extra_tensor_is_named(tmp_path, reader, change, fragment):
    folder = write_openai_folder(random_hf_model(97, 16, 16, 2, 2, seed=7), tmp_path / "m", **change)
    with pytest.raises(GptkitError) as info:
        openai_tf.load_folder(folder, reader)
    assert str(info.value) == f"{folder / 'model.ckpt.index'}: {fragment}"


@pytest.fixture(scope="module")
def gpt2_sized_folder(tmp_path_factory):
    if not SHARED_GPT2.is_dir():
        pytest.skip(f"GPT-2 vocabulary files not found in {SHARED_GPT2}")
    model = random_hf_model(50257, 32, 16, 2, 1, seed=11)
    return write_openai_folder(model, tmp_path_factory.mktemp("gpt2") / "openai", real_vocab=True)


@pytest.mark.parametrize("size", ["124M", "355M"])
def test_gpt2_generate_experiment_downloads_and_generates(gpt2_sized_folder, tmp_path, size):
    with serve_folder(gpt2_sized_folder, size=size) as server:
        args = ["run", str(ROOT / "experiments" / "gpt2_generate.toml"), f"init.checkpoint.dir={tmp_path / 'cache'}",
                f"init.checkpoint.base_url={server.url}", f"run.out_dir={tmp_path / 'run'}", "run.device=cpu",
                "generate.max_new_tokens=5", "data.tokenizer.name=bytes"]
        if size != "124M":
            args.append(f"init.checkpoint.model=gpt2-{size}")
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert openai_tf.is_complete(tmp_path / "cache" / size)
    assert (tmp_path / "run" / "samples.txt").read_text(encoding="utf-8").startswith("Every effort moves you")
