"""`gptkit serve SOURCE`: the model behind OpenAI's API (gptkit.serve; the serve extra)."""

from __future__ import annotations

import click

from gptkit.commands import Command, device_options, use_device


@click.command(cls=Command)
@click.argument("source")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; the default takes connections from this machine only.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Requests decoded together at most; others wait their turn.")
@click.option("--model-name", help="The model id clients send and /v1/models lists (default: SOURCE as given).")
@click.option("--prompt-format", "format_name", help="The prompt format of /v1/chat/completions. Default: the one the model was fine-tuned with.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@device_options
def serve(source, host, port, max_batch, model_name, format_name, dtype, device, threads) -> None:
    """Serve SOURCE over OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models, /health),
    decoding concurrent requests together (see gptkit.serve). Needs the serve extra."""
    import torch

    from gptkit.serve import run_server

    run_server(source, host=host, port=port, max_batch=max_batch, model_id=model_name, format_name=format_name,
               device=use_device(device, threads), dtype=torch.bfloat16 if dtype == "bf16" else None)
