"""Prompt formats: alpaca byte for byte as the original ch07, phi3, compact, and chat's use."""

import json

import pytest

from conftest import SHARED_DATA
from gptkit.config import Component
from gptkit.interfaces import Context, PromptFormat
from gptkit.plugins import registry

WITH_INPUT = {"instruction": "Add the numbers.", "input": "2+3", "output": "5", "family": "add"}
WITHOUT_INPUT = {"instruction": "Name a colour.", "input": "", "output": "Blue."}


def fmt(name):
    return registry.prompt.build(Component(name), Context())


def test_alpaca_is_the_originals_text_on_every_shipped_record(ch07):
    path = SHARED_DATA / "instruction-data.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    records = json.loads(path.read_text(encoding="utf-8"))
    assert len(records) == 1100
    alpaca = fmt("alpaca")
    for record in records:
        prompt, response = alpaca(record)
        assert prompt + response == ch07.format_input(record) + f"\n\n### Response:\n{record['output']}"
        assert prompt == ch07.format_input(record) + "\n\n### Response:\n" and response == record["output"]


def test_alpaca_written_out():
    preamble = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    assert fmt("alpaca")(WITH_INPUT) == (f"{preamble}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2+3\n\n### Response:\n", "5")
    assert fmt("alpaca")(WITHOUT_INPUT) == (f"{preamble}\n\n### Instruction:\nName a colour.\n\n### Response:\n", "Blue.")


def test_phi3_and_compact_written_out():
    assert fmt("phi3")(WITH_INPUT) == ("<|user|>\nAdd the numbers.\n2+3\n<|assistant|>\n", "5")
    assert fmt("phi3")(WITHOUT_INPUT) == ("<|user|>\nName a colour.\n<|assistant|>\n", "Blue.")
    assert fmt("compact")(WITH_INPUT) == ("Add the numbers.\n2+3\n=", "5")
    assert fmt("compact")(WITHOUT_INPUT) == ("Name a colour.\n=", "Blue.")


@pytest.mark.parametrize("name", ["alpaca", "phi3", "compact"])
def test_chat_prompt_from_a_bare_message(name):
    """Chat formats the user's text as an instruction with no input and no output; input and
    output may also be left out."""
    prompt_format = fmt(name)
    assert isinstance(prompt_format, PromptFormat) and prompt_format.name == name
    prompt, response = prompt_format({"instruction": "Hi there", "input": "", "output": ""})
    assert response == "" and "Hi there" in prompt
    assert prompt_format({"instruction": "Hi there"}) == (prompt, "")
    assert prompt == prompt_format({**WITHOUT_INPUT, "instruction": "Hi there"})[0]
