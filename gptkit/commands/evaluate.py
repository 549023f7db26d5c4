"""`gptkit eval`: a model's loss and perplexity on a text (the evaluate recipe's measure), or the
scores of an existing responses.json (the instruct recipe's scorers)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gptkit.commands import Command, device_options, use_device
from gptkit.config import Component, load_config
from gptkit.errors import GptkitError
from gptkit.interfaces import Context


@click.command("eval", cls=Command)
@click.argument("source", required=False)
@click.option("--text", "text_file", type=click.Path(dir_okay=False), help="UTF-8 text file to score (needs SOURCE).")
@click.option("--responses", "responses_file", type=click.Path(dir_okay=False), help="Re-score a responses.json (no model needed).")
@click.option("--scorer", "scorer_names", multiple=True,
              help="With --responses: a registered scorer (repeat). Default: the [eval] scorers of the config.toml beside the file, else exact-match.")
@click.option("--stride", type=int, help="Window stride in tokens for texts longer than the context (default: the context).")
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (loss, perplexity, tokens; or the scores).")
def eval_command(source, text_file, responses_file, scorer_names, stride, device, threads, as_json) -> None:
    """Loss and perplexity of SOURCE's model on a text (--text; no token prepended), or the scores
    of an existing responses.json (--responses), as the instruct recipe writes them."""
    if (text_file is None) == (responses_file is None):
        raise GptkitError("give one of --text FILE (with SOURCE) or --responses FILE")
    if responses_file is not None:
        rescore(Path(responses_file), scorer_names, as_json)
        return
    if source is None:
        raise GptkitError("--text needs the SOURCE whose model to score")
    from gptkit.evaluation import text_loss
    from gptkit.files import read_text
    from gptkit.sources import load_model
    from gptkit.weights import check_vocab

    text = read_text(text_file)
    model, tokenizer = load_model(source, device=use_device(device, threads))
    check_vocab(model.config, tokenizer, source)
    result = text_loss(model, tokenizer.encode(text), stride=stride)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  ({result['tokens']} tokens predicted)")


def rescore(path: Path, scorer_names: tuple[str, ...], as_json: bool) -> None:
    """Score a responses.json again, as the instruct recipe scores it: with the scorers named, else
    those of its run's config.toml."""
    from gptkit.evaluation import result_line, score_responses
    from gptkit.recipes.instruct import read_responses

    records = read_responses(path)
    run_config = path.parent / "config.toml"
    if scorer_names:
        scorers = [Component(name) for name in scorer_names]
    elif run_config.is_file():
        scorers = load_config(run_config).eval.scorers
    else:
        scorers = [Component("exact-match")]
    results, _ = score_responses(records, scorers, Context())
    if as_json:
        click.echo(json.dumps(results))
        return
    for name, result in results.items():
        click.echo(f"{name}: {result_line(result)}")
