"""`gptkit eval`: a model's loss and perplexity on a text (the evaluate recipe's measure), the
scores of an existing responses.json (the instruct recipe's scorers), or lm-evaluation-harness
tasks on a model (gptkit.harness)."""

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
@click.option("--harness", "harness_tasks", metavar="TASK[,TASK]", help="Run lm-evaluation-harness tasks on SOURCE's model (needs the eval extra).")
@click.option("--scorer", "scorer_names", multiple=True,
              help="With --responses: a registered scorer (repeat). Default: the [eval] scorers of the config.toml beside the file, else exact-match.")
@click.option("--stride", type=int, help="Window stride in tokens for texts longer than the context (default: the context).")
@click.option("--tasks-path", "tasks_paths", multiple=True, type=click.Path(file_okay=False),
              help="With --harness: a folder of lm-eval task YAML files, whose tasks --harness can then name (repeat).")
@click.option("--limit", type=click.IntRange(min=1), help="With --harness: at most N documents per task.")
@click.option("--batch-size", type=click.IntRange(min=1), help="With --harness: requests scored or generated together (default 8).")
@device_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (loss, perplexity, tokens; the scores; or lm-eval's results).")
def eval_command(source, text_file, responses_file, harness_tasks, scorer_names, stride, tasks_paths, limit, batch_size, device, threads, as_json) -> None:
    """Loss and perplexity of SOURCE's model on a text (--text; no token prepended), the scores of
    an existing responses.json (--responses), as the instruct recipe writes them, or lm-eval-harness
    tasks on SOURCE's model (--harness; prints lm-eval's results table)."""
    if sum(option is not None for option in (text_file, responses_file, harness_tasks)) != 1:
        raise GptkitError("give one of --text FILE (with SOURCE), --responses FILE or --harness TASK[,TASK] (with SOURCE)")
    if harness_tasks is None and (tasks_paths or limit or batch_size):
        raise GptkitError("--tasks-path, --limit and --batch-size go with --harness")
    if harness_tasks is not None:
        if source is None:
            raise GptkitError("--harness needs the SOURCE whose model to evaluate")
        harness_eval(source, harness_tasks.split(","), tasks_paths, limit, batch_size, use_device(device, threads), as_json)
        return
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


def harness_eval(source, tasks: list[str], tasks_paths, limit, batch_size, device, as_json: bool) -> None:
    """lm-eval's tasks on SOURCE's model through gptkit.harness, which needs the eval extra."""
    from gptkit.sources import load_model

    try:
        from gptkit.harness import GptkitLM, evaluate, results_json, results_table
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "lm_eval":
            raise
        raise GptkitError("--harness needs the eval extra (lm-evaluation-harness): pip install 'gptkit[eval]'") from None
    model, tokenizer = load_model(source, device=device)
    lm = GptkitLM(source, model=model, tokenizer=tokenizer, **({"batch_size": batch_size} if batch_size else {}))
    results = evaluate(lm, tasks, tasks_paths=tasks_paths, limit=limit)
    click.echo(results_json(results) if as_json else results_table(results))


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
