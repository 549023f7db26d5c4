"""Prompt formats: a record {instruction, input, output} -> (prompt text, response text).

The model is trained on prompt + response and, at inference, continues the prompt. `input` may be
missing or empty: then its part is left out.

Chat (`gptkit chat`, `gptkit serve`'s /v1/chat/completions) is multi-turn: `conversation(turns,
instruction)` writes the earlier (instruction, response) turns as the format writes a record, each
response followed by `next_turn` (the format's instruction header) instead of the whole `before`
again, then the new instruction and the response marker. Alpaca, with one earlier turn:

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {first instruction}

    ### Response:
    {first response}

    ### Instruction:
    {new instruction}

    ### Response:

With no earlier turn it is the record's prompt, as the model was trained on.

- `alpaca`: the Alpaca template of the original ch07 script; prompt + response is byte for byte
  its `format_input(entry) + "\\n\\n### Response:\\n" + entry["output"]`.
- `phi3`: the book's exercise variant in Phi-3's chat markup.
- `compact`: "{instruction}\n{input}\n=" then the output, for small byte-level models: the
  Alpaca markup is 124 bytes before the instruction alone (the shipped data's median answer is 40),
  more than a context of 64-128 tokens can spare beside the instruction and the answer.
"""

from __future__ import annotations

from gptkit import hookimpl
from gptkit.interfaces import PromptTemplate


ALPACA = PromptTemplate(
    "alpaca",
    before="Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n",
    input_separator="\n\n### Input:\n",
    response_marker="\n\n### Response:\n",
    next_turn="\n\n### Instruction:\n",
)
PHI3 = PromptTemplate("phi3", before="<|user|>\n", input_separator="\n", response_marker="\n<|assistant|>\n", next_turn="\n<|user|>\n")
COMPACT = PromptTemplate("compact", before="", input_separator="\n", response_marker="\n=", next_turn="\n")


@hookimpl
def register_components(registry):
    docs = {
        ALPACA: "Alpaca: preamble, ### Instruction, ### Input (when given), ### Response (the original scripts').",
        PHI3: "Phi-3 chat markup: <|user|> instruction and input, <|assistant|> response.",
        COMPACT: "Instruction, input and '=' on lines of their own: short prompts for small byte-level models.",
    }
    for template, doc in docs.items():
        registry.prompt.register(template.name, lambda ctx, template=template: template, doc=doc)
