"""`gptkit generate`: output shapes, streaming, batches, stdin and input errors (exit 2)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gptkit.checkpoint import save_model
from gptkit.cli import cli
from tinymodel import byte_tokenizer, one_thread, tiny_gpt  # noqa: F401 (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_model(tmp_path_factory.mktemp("models") / "tiny", tiny_gpt(), byte_tokenizer()))


def generate(*args, input=None):
    return CliRunner().invoke(cli, ["generate", *args], input=input)


def test_json_is_one_line_per_prompt(model_dir):
    result = generate(model_dir, "--prompt", "Hello", "--prompt", "Hi there", "--max-new-tokens", "7", "--json", "--ignore-eos")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    rows = [json.loads(line) for line in lines]
    for row, prompt in zip(rows, ["Hello", "Hi there"]):
        assert set(row) == {"prompt", "text", "token_ids", "new_tokens", "tokens_per_s"}
        assert row["prompt"] == prompt and row["new_tokens"] == 7
        assert row["token_ids"][: len(prompt)] == list(prompt.encode())
        assert len(row["token_ids"]) == len(prompt) + 7
        assert row["text"] == byte_tokenizer().decode(row["token_ids"][len(prompt) :])
        assert row["tokens_per_s"] > 0


def test_stream_prints_the_same_text_as_without(model_dir):
    args = [model_dir, "--prompt", "Hello", "--max-new-tokens", "40", "--sampler", "top-p", "--top-p", "0.95", "--temperature", "1.2", "--seed", "3", "--ignore-eos"]
    plain = generate(*args)
    streamed = generate(*args, "--stream")
    assert plain.exit_code == 0 and streamed.exit_code == 0, plain.output + streamed.output
    assert streamed.stdout == plain.stdout
    assert plain.stdout.startswith("Hello") and len(plain.stdout) > len("Hello\n")


def test_prompt_from_stdin_and_bf16(model_dir):
    result = generate(model_dir, "--max-new-tokens", "5", "--json", "--dtype", "bf16", input="Hello\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prompt"] == "Hello"


def test_same_seed_same_text(model_dir):
    args = [model_dir, "--prompt", "Hello", "--top-k", "50", "--seed", "11", "--json", "--ignore-eos"]
    assert json.loads(generate(*args).stdout)["text"] == json.loads(generate(*args).stdout)["text"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "x", "--sampler", "nucleus"], "nucleus"),
        (["--prompt", "x", "--top-k", "0"], "top_k"),
        (["--prompt", "x", "--top-p", "0"], "top_p must be in (0, 1]"),
        (["--prompt", "x", "--top-p", "1.2"], "top_p must be in (0, 1]"),
        (["--prompt", "x", "--temperature", "-0.5"], "temperature"),
        (["--prompt", "x", "--prompt", "y", "--stream"], "--stream takes one prompt"),
    ],
)
def test_bad_input_exits_2_with_one_line(model_dir, args, message):
    result = generate(model_dir, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
