"""`gptkit generate SOURCE`: continue text with a model, as the generate recipe does."""

from __future__ import annotations

import json
import time

import click

from gptkit.commands import Command, device_options, sampling_options, stdin_prompt, use_device
from gptkit.errors import GptkitError


@click.command(cls=Command)
@click.argument("source")
@click.option("--prompt", "prompts", multiple=True, help="Text to continue; repeat for a batch. Default: all of stdin.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=50, show_default=True)
@sampling_options
@click.option("--stream", is_flag=True, help="Print the text as the tokens come (one prompt).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per prompt: prompt, text, token_ids, new_tokens, tokens_per_s.")
@click.option("--ignore-eos", is_flag=True, help="Keep going past end-of-text.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@device_options
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the decoding step (for GPUs; on CPU it is slower).")
def generate(source, prompts, max_new_tokens, sampler, temperature, top_k, top_p, seed, stream, as_json, ignore_eos, dtype, device, threads, compile_):
    """Continue text with the model SOURCE (a run, checkpoint or model folder, or a model name).

    Prints each prompt followed by its completion (a blank line between prompts). With --json, one
    line per prompt, where tokens_per_s is that prompt's new tokens over the batch's prefill + decode
    time (so the lines' figures add up to the batch's throughput).
    """
    if stream and as_json:
        raise GptkitError("--stream and --json do not go together")
    texts = list(prompts) or [stdin_prompt()]
    if stream and len(texts) > 1:
        raise GptkitError("--stream takes one prompt")
    if any(not text for text in texts):
        raise GptkitError("empty prompt: give at least one character of text to continue")
    import torch

    from gptkit.generation import stream_text, text_generation
    from gptkit.sources import load_model

    model, tokenizer = load_model(source, device=use_device(device, threads), dtype=torch.bfloat16 if dtype == "bf16" else None)
    if tokenizer is None:
        raise GptkitError(f"{source}: no tokenizer comes with this model")
    generation = text_generation(
        model, tokenizer, texts, max_new_tokens=max_new_tokens, sampler=sampler, temperature=temperature,
        top_k=top_k, top_p=top_p, seed=seed, ignore_eos=ignore_eos, compile=compile_,
    )
    if stream:
        click.echo(texts[0], nl=False)
        for piece in stream_text(generation, tokenizer):
            click.echo(piece, nl=False)
        click.echo()
        return
    start = time.perf_counter()
    completions = generation.run()
    seconds = time.perf_counter() - start
    for i, (text, c) in enumerate(zip(texts, completions)):
        completion = tokenizer.decode(c.new_ids)
        if as_json:
            row = dict(
                prompt=text,
                text=completion,
                token_ids=c.prompt_ids + c.new_ids,
                new_tokens=len(c.new_ids),
                tokens_per_s=round(len(c.new_ids) / seconds, 3) if seconds > 0 else 0.0,
            )
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            click.echo(("\n" if i else "") + text + completion)
