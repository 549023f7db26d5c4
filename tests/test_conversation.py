"""Multi-turn chat: the prompt formats' conversation rendering, dropping the oldest turns to fit the
context, and `gptkit chat` giving the model the earlier turns (checked on the ids the model receives)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import gptkit
from gptkit.checkpoint import save_model
from gptkit.cli import cli
from gptkit.config import Component
from gptkit.conversation import Conversation, fit_conversation, render
from gptkit.interfaces import Context
from gptkit.model import GPT
from gptkit.plugins import registry
from tinymodel import byte_tokenizer, one_thread, tiny_gpt  # noqa: F401 (one_thread: autouse fixture)

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
TURNS = [("Name a colour.", "Blue."), ("Another one?", "Red.")]


def fmt(name):
    return registry.prompt.build(Component(name), Context())


def test_alpaca_conversation_written_out():
    assert render(fmt("alpaca"), TURNS, "And a third?") == (
        f"{PREAMBLE}\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue."
        "\n\n### Instruction:\nAnother one?\n\n### Response:\nRed."
        "\n\n### Instruction:\nAnd a third?\n\n### Response:\n"
    )


def test_phi3_and_compact_conversations_written_out():
    assert render(fmt("phi3"), TURNS[:1], "Another one?") == "<|user|>\nName a colour.\n<|assistant|>\nBlue.\n<|user|>\nAnother one?\n<|assistant|>\n"
    assert render(fmt("compact"), TURNS, "And a third?") == "Name a colour.\n=Blue.\nAnother one?\n=Red.\nAnd a third?\n="


@pytest.mark.parametrize("name", ["alpaca", "phi3", "compact"])
def test_without_earlier_turns_the_prompt_is_the_trained_one(name):
    assert render(fmt(name), [], "Hi there") == fmt(name)({"instruction": "Hi there", "input": "", "output": ""})[0]


def test_a_format_without_conversation_writes_each_turn_as_a_record():
    def plain(record):
        return f"Q: {record['instruction']}\nA: ", record.get("output", "")

    assert render(plain, TURNS[:1], "Another one?", system="Be brief.") == "Be brief.\n\nQ: Name a colour.\nA: Blue.\n\nQ: Another one?\nA: "


def test_the_oldest_turns_go_first_when_the_context_is_short():
    tokenizer, compact = byte_tokenizer(), fmt("compact")
    full = len(tokenizer.encode(render(compact, TURNS, "Third?")))
    ids, dropped = fit_conversation(compact, tokenizer, TURNS, "Third?", context_length=full + 5, room=5)
    assert (dropped, tokenizer.decode(ids)) == (0, render(compact, TURNS, "Third?"))
    ids, dropped = fit_conversation(compact, tokenizer, TURNS, "Third?", context_length=full + 4, room=5)
    assert (dropped, tokenizer.decode(ids)) == (1, "Another one?\n=Red.\nThird?\n=")
    _, dropped = fit_conversation(compact, tokenizer, TURNS, "Third?", context_length=10, room=5)
    assert dropped == 2  # the instruction alone does not fit either: the caller decides

    conversation = Conversation(compact, tokenizer, context_length=full + 4, room=5)
    for asked, answered in TURNS:
        conversation.add(asked, f" {answered}\n")  # kept without the white space around it
    assert conversation.prompt("Third?") == "Another one?\n=Red.\nThird?\n="
    assert conversation.turns == TURNS[1:]  # forgotten for good: the conversation only grows


@pytest.fixture
def chat_model(tmp_path):
    """A tiny random byte-level GPT saved with the alpaca prompt format, as an instruct run saves it."""
    model = tiny_gpt(context_length=1024)
    folder = save_model(tmp_path / "model", model, byte_tokenizer(), prompt=Component("alpaca"))
    return folder, model


def test_chat_of_three_turns_on_stdin_gives_the_model_the_earlier_turns(chat_model, monkeypatch):
    folder, model = chat_model
    prompts = []  # the ids of each prefill the model runs
    forward = GPT.forward

    def recording(self, idx, **kwargs):
        if idx.shape[1] > 1:
            prompts.append(idx[0].tolist())
        return forward(self, idx, **kwargs)

    monkeypatch.setattr(GPT, "forward", recording)
    questions = ["Name a colour.", "Another one?", "And a third?", "Start again."]
    result = CliRunner().invoke(cli, ["chat", str(folder), "--max-new-tokens", "8"], input="\n".join([*questions[:3], "/reset", questions[3]]) + "\n")
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(GPT, "forward", forward)

    tokenizer, alpaca = byte_tokenizer(), fmt("alpaca")
    turns, expected, answers = [], [], []
    for i, question in enumerate(questions):
        if i == 3:
            turns = []  # /reset
        prompt = render(alpaca, turns, question)
        expected.append(tokenizer.encode(prompt))
        answer = gptkit.generate(model, tokenizer, prompt, max_new_tokens=8)
        answers.append(answer.strip().replace("\n", " "))
        turns.append((question, answer.strip()))
    assert prompts == expected
    assert all(q in tokenizer.decode(prompts[2]) for q in questions[:3])  # the third prompt holds both earlier turns
    assert result.stdout.splitlines() == answers  # one answer line per instruction; /reset answers nothing
    assert "(a new conversation)" in result.stderr
