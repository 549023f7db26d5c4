"""Multi-turn chat with an instruction-tuned model: the conversation so far, rendered in the model's
prompt format, is the prompt of each new instruction (`gptkit chat`, and `gptkit serve`'s
/v1/chat/completions for its messages).

A prompt format renders the turns with its `conversation(turns, instruction)` (the built-ins:
earlier instructions and responses before the new instruction, see gptkit_plugins.prompts); one
without it gets each earlier turn written as it writes a record (prompt + response), a blank line
after each. When the prompt and the tokens to generate would not fit the context, the oldest
turns are dropped first.
"""

from __future__ import annotations

from typing import Sequence

from gptkit.interfaces import PromptFormat, Tokenizer

Turn = tuple[str, str]  # (instruction, the model's response)


def render(prompt_format: PromptFormat, turns: Sequence[Turn], instruction: str, system: str = "") -> str:
    """The prompt of `instruction` after the earlier `turns`; `system` text, if any, goes first,
    followed by a blank line (gptkit's prompt formats have no system part of their own)."""
    if hasattr(prompt_format, "conversation"):
        text = prompt_format.conversation(list(turns), instruction)
    else:
        earlier = [prompt_format({"instruction": asked})[0] + answered + "\n\n" for asked, answered in turns]
        text = "".join(earlier) + prompt_format({"instruction": instruction})[0]
    return f"{system}\n\n{text}" if system else text


def fit_conversation(
    prompt_format: PromptFormat,
    tokenizer: Tokenizer,
    turns: Sequence[Turn],
    instruction: str,
    *,
    context_length: int,
    room: int,
    system: str = "",
) -> tuple[list[int], int]:
    """The token ids of the prompt, the oldest turns dropped until `room` more tokens fit the
    context, and how many turns were dropped. With every turn dropped the ids may still not fit
    (the instruction alone is too long): the caller decides what then."""
    for dropped in range(len(turns) + 1):
        ids = tokenizer.encode(render(prompt_format, turns[dropped:], instruction, system))
        if len(ids) + room <= context_length:
            break
    return ids, dropped


class Conversation:
    """The turns of one chat: `prompt(instruction)` gives the text to generate after (forgetting the
    turns that no longer fit with `room` new tokens), `add` records the answer, `reset` starts over."""

    def __init__(self, prompt_format: PromptFormat, tokenizer: Tokenizer, *, context_length: int, room: int):
        self.prompt_format, self.tokenizer = prompt_format, tokenizer
        self.context_length, self.room = context_length, room
        self.turns: list[Turn] = []

    def prompt(self, instruction: str) -> str:
        _, dropped = fit_conversation(
            self.prompt_format, self.tokenizer, self.turns, instruction, context_length=self.context_length, room=self.room
        )
        del self.turns[:dropped]
        return render(self.prompt_format, self.turns, instruction)

    def add(self, instruction: str, response: str) -> None:
        """Record a turn; the response without the white space around it, as the prompt format writes
        a trained response (followed directly by what comes next)."""
        self.turns.append((instruction, response.strip()))

    def reset(self) -> None:
        self.turns.clear()
