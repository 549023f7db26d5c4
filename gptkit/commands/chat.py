"""`gptkit chat SOURCE`: talk to an instruction-tuned model in its prompt format."""

from __future__ import annotations

import sys

try:
    import readline  # noqa: F401  (line editing and history for input())
except ImportError:  # pragma: no cover - platforms without it
    readline = None

import click

from gptkit.commands import Command, device_options, sampling_options, use_device
from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.plugins import registry


@click.command(cls=Command)
@click.argument("source")
@click.option("--prompt-format", "format_name", help="A registered prompt format. Default: the one the model was fine-tuned with.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@sampling_options
@device_options
def chat(source, format_name, max_new_tokens, sampler, temperature, top_k, top_p, seed, device, threads) -> None:
    """Talk to an instruction-tuned model SOURCE in its prompt format: each instruction is answered
    after the conversation so far (the oldest turns dropped when it outgrows the context).

    In a terminal: type an instruction, read the answer as it is generated; /reset starts a new
    conversation, /exit (or Ctrl-D) ends. With stdin not a terminal, each input line is one
    instruction (or /reset) and each instruction gets one answer line.
    """
    from gptkit.conversation import Conversation
    from gptkit.generation import stream_text, text_generation
    from gptkit.sources import load_model_and_prompt

    model, tokenizer, saved_format = load_model_and_prompt(source, device=use_device(device, threads))
    if format_name is None and saved_format is None:
        raise GptkitError(f"{source}: the model records no prompt format (it was not instruction-tuned by gptkit); name one with --prompt-format")
    spec = Component(format_name) if format_name else saved_format
    prompt_format = registry.prompt.build(spec, Context(tokenizer=tokenizer))
    conversation = Conversation(prompt_format, tokenizer, context_length=model.config.context_length, room=max_new_tokens)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"chatting with {source} in the {spec.name!r} prompt format; /reset starts over, /exit ends", err=True)
    while True:
        try:
            line = input("> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:
            break
        instruction = line.strip()
        if instruction in ("/exit", "/quit"):
            break
        if instruction == "/reset":
            conversation.reset()
            click.echo("(a new conversation)", err=True)
            continue
        if not instruction:
            continue
        generation = text_generation(
            model, tokenizer, [conversation.prompt(instruction)], max_new_tokens=max_new_tokens, sampler=sampler,
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        )
        if interactive:
            pieces = []
            for piece in stream_text(generation, tokenizer):
                pieces.append(piece)
                click.echo(piece, nl=False)
            click.echo()
            response = "".join(pieces)
        else:
            (completion,) = generation.run()
            response = tokenizer.decode(completion.new_ids)
            click.echo(response.strip().replace("\n", " "))
        conversation.add(instruction, response)
