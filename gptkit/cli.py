"""The `gptkit` command line. Input errors print one line on stderr and exit 2; `--debug` shows tracebacks.
A run stopped by Ctrl-C or SIGTERM after saving its checkpoint exits 130 or 143 (128 + the signal);
Ctrl-C at any other moment prints `interrupted` and exits 130, never a traceback.

Shell completion (click): `eval "$(_GPTKIT_COMPLETE=bash_source gptkit)"` (zsh_source, fish_source).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

try:
    import readline  # noqa: F401  (line editing and history for `gptkit chat`'s input())
except ImportError:  # pragma: no cover - platforms without it
    readline = None

import attrs
import click
import torch

from gptkit import distributed, plugins as plugin_manager
from gptkit.config import Component, load_config, show_toml
from gptkit.conversation import Conversation
from gptkit.errors import GptkitError, RunInterrupted
from gptkit.evaluation import result_line, score_responses, text_loss
from gptkit.files import read_text
from gptkit.generation import stream_text, text_generation
from gptkit.interfaces import Context
from gptkit.interrupts import interrupts_deferred
from gptkit.plugins import GptkitWarning, registry
from gptkit.runs import resolve_device, run as run_config
from gptkit.serve import run_server
from gptkit.sources import load_model, load_model_and_prompt, load_source
from gptkit.sweep import is_offline, load_sweep, run_offline, run_online
from gptkit.version import __version__
from gptkit.weights import check_vocab


class GptkitGroup(click.Group):
    """Turns gptkit's errors into clear messages and exit codes instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RunInterrupted as exc:
            if distributed.Processes.from_env().rank == 0:  # every rank stopped at the same step; one says so
                click.echo(str(exc), err=True)
            sys.exit(exc.exit_code)
        except GptkitError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=GptkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gptkit")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """gptkit: pretrain, load, generate with and fine-tune GPT-2 models, built from plugins."""
    ctx.ensure_object(dict)["debug"] = debug


LAUNCH_COMMAND = "GPTKIT_LAUNCH_COMMAND"  # the command line of `gptkit run --nproc N`, for the processes it starts


@cli.command()
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--nproc", type=click.IntRange(min=1), metavar="N", help="Train in N processes on this machine, started by torchrun's elastic launcher (one per GPU on CUDA).")
@click.pass_context
def run(ctx: click.Context, experiment: str, overrides: tuple[str, ...], nproc: int | None) -> None:
    """Run EXPERIMENT.toml, with KEY=VALUE (or ~KEY) overrides.

    Ctrl-C or SIGTERM saves a checkpoint, prints the command that resumes, and exits 130 or 143.
    Several nodes: start `torchrun ... -m gptkit run EXPERIMENT.toml` on each (see the README)."""
    config = load_config(experiment, overrides)
    argv = ctx.obj.get("argv", ["run", experiment, *overrides])
    if nproc is not None:
        check_launch(config, nproc)
        os.environ[LAUNCH_COMMAND] = json.dumps(["gptkit", *argv])
        sys.exit(distributed.launch(nproc, without_nproc(argv)))
    # The command line as given, global options included: config.toml records it, the resume hint repeats it.
    command = json.loads(os.environ[LAUNCH_COMMAND]) if LAUNCH_COMMAND in os.environ else ["gptkit", *argv]
    run_config(attrs.evolve(config, provenance={**config.provenance, "command": command}))


def check_launch(config, nproc: int) -> None:
    """What can be told before starting `nproc` processes: the batch split, the strategy, the GPUs."""
    if distributed.Processes.from_env().launched:
        raise GptkitError("--nproc: this process was itself started by torchrun; leave --nproc out")
    distributed.check_batch(config.train.batch_size, config.train.grad_accum, nproc)
    distributed.resolve_strategy(config.train.strategy, distributed.Processes(world_size=nproc, launched=True))
    if resolve_device(config.run.device).type == "cuda" and nproc > torch.cuda.device_count():
        raise GptkitError(f"--nproc {nproc}: this machine has {torch.cuda.device_count()} GPU(s); start at most one process per GPU")


def without_nproc(argv: list[str]) -> list[str]:
    """The command line arguments less `--nproc N` (or `--nproc=N`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


@cli.command("list")
@click.argument("kind", required=False)
def list_components(kind: str | None) -> None:
    """Registered components (of KIND, or of every kind), with origin and doc."""
    registries = [registry[kind]] if kind else list(registry)
    for i, reg in enumerate(registries):
        if i:
            click.echo()
        click.echo(f"{reg.kind}:")
        entries = reg.entries()
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            click.echo(f"  {e.name:<{width}}  {e.doc}  [{e.origin}]")
        if not entries:
            click.echo("  (none registered)")


@cli.command()
def plugins() -> None:
    """Loaded plugins: entry point, distribution, version, hooks."""
    for info in plugin_manager.loaded():
        kind = "built-in" if info.builtin else "third-party"
        status = f"FAILED: {info.error}" if info.error else ", ".join(info.hooks) or "(no hooks)"
        click.echo(f"{info.name:<14} {info.distribution} {info.version} ({kind})  {status}")


@cli.group()
def config() -> None:
    """Show or check an experiment's resolved config."""


@config.command("show")
@click.argument("experiment", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def config_show(experiment: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved config as TOML; keys left unset are shown commented, with what unset means."""
    click.echo(show_toml(load_config(experiment, overrides)), nl=False)


@config.command("validate")
@click.argument("experiments", nargs=-1, required=True)
@click.option("-o", "--override", "overrides", multiple=True, help="KEY=VALUE applied to every experiment.")
def config_validate(experiments: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check structure, types and component names (not whether files or URLs exist).

    EXPERIMENTS are TOML files (*.toml), optionally followed by KEY=VALUE overrides for all of them.
    """
    files = [e for e in experiments if e.endswith(".toml") and "=" not in e and not e.startswith("~")]
    extra = [e for e in experiments if e not in files] + list(overrides)
    failed = False
    for path in files:
        try:
            load_config(path, extra)
        except GptkitError as exc:
            failed = True
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(f"{path}: ok")
    if failed:
        sys.exit(2)


@cli.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--count", type=int, help="Trials in all (offline; default: the whole grid, or run_cap); online, the trials of this agent.")
@click.option("--offline", is_flag=True, help="Search locally even with W&B credentials (also: WANDB_MODE=offline, or none present).")
@click.option("--resume", is_flag=True, help="Continue an interrupted offline sweep (running the same command again does too).")
def sweep(sweep_file: str, count: int | None, offline: bool, resume: bool) -> None:
    """Run the W&B sweep SWEEP_FILE (W&B's sweep format, YAML or TOML) over its `program` experiment:
    a W&B sweep when W&B is online, else the same search locally, in runs/<sweep>/ (see gptkit.sweep)."""
    if count is not None and count < 1:
        raise GptkitError(f"--count: must be >= 1, got {count}")
    checked = load_sweep(sweep_file)
    if is_offline(offline):
        run_offline(checked, count, resume, log=click.echo)
    elif resume:
        raise GptkitError("--resume continues offline sweeps; an online sweep goes on with: wandb agent SWEEP_ID")
    else:
        click.echo(f"W&B sweep {run_online(checked, count)} done")


DOWNLOAD_LOADERS = {"openai": "openai-tf", "hf": "hf"}  # --source -> checkpoint loader


@cli.command()
@click.argument("name")
@click.option("--source", type=click.Choice(sorted(DOWNLOAD_LOADERS)), default="openai", show_default=True,
              help="OpenAI's TensorFlow checkpoints or the Hugging Face hub.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Download folder (default: the cache).")
def download(name: str, source: str, directory: str | None) -> None:
    """Download pretrained weights NAME (gpt2-124M ... gpt2-1558M, an alias, or a hub id); print the folder."""
    loader = registry.checkpoint.build(Component(DOWNLOAD_LOADERS[source], {"dir": directory}), Context())
    click.echo(loader.download(name))


@cli.command()
@click.argument("source")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="hf", show_default=True,
              help="A checkpoint loader that writes its format: hf (transformers' GPT2LMHeadModel) or gptkit.")
def export(source: str, directory: str, fmt: str) -> None:
    """Write the model SOURCE (run folder, model folder or name) into the new folder DIRECTORY."""
    writer = registry.checkpoint.build(Component(fmt), Context())
    if not hasattr(writer, "save"):
        writers = [n for n in registry.checkpoint.names() if hasattr(registry.checkpoint.get(n).factory, "save")]
        raise GptkitError(f"--format {fmt}: that checkpoint loader cannot write its format (formats: {', '.join(writers)})")
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise GptkitError(f"{target}: exists and is not an empty folder; export writes a new folder")
    click.echo(writer.save(load_source(source), target))


def sampling_options(command):
    """--sampler, --temperature, --top-k, --top-p, --seed: how `generate` and `chat` pick tokens."""
    options = [
        click.option("--sampler", help="A registered sampler. Default: greedy, or top-k / top-p when their options are given."),
        click.option("--temperature", type=float),
        click.option("--top-k", type=int),
        click.option("--top-p", type=float),
        click.option("--seed", type=int, help="Seed of the sampler's random generator: the same seed gives the same text."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def device_options(command):
    """--device and --threads, for the commands that run a model."""
    command = click.option("--threads", type=click.IntRange(min=1), help="torch's intra-op threads (default: torch's own choice).")(command)
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")(command)


@cli.command("eval")
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
        if threads:
            torch.set_num_threads(threads)
        harness_eval(source, harness_tasks.split(","), tasks_paths, limit, batch_size, resolve_device(device), as_json)
        return
    if responses_file is not None:
        rescore(Path(responses_file), scorer_names, as_json)
        return
    if source is None:
        raise GptkitError("--text needs the SOURCE whose model to score")
    if threads:
        torch.set_num_threads(threads)
    text = read_text(text_file)
    model, tokenizer = load_model(source, device=resolve_device(device))
    check_vocab(model.config, tokenizer, source)
    result = text_loss(model, tokenizer.encode(text), stride=stride)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  ({result['tokens']} tokens predicted)")


def harness_eval(source, tasks: list[str], tasks_paths, limit, batch_size, device, as_json: bool) -> None:
    """lm-eval's tasks on SOURCE's model through gptkit.harness, imported here: it needs the eval extra."""
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
    """Score a responses.json again: with the scorers named, else those of its run's config.toml."""
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise GptkitError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(records, list):
        raise GptkitError(f"{path}: expected a JSON array of records, as responses.json holds")
    for i, record in enumerate(records):
        missing = [key for key in ("output", "model_response") if not isinstance(record, dict) or not isinstance(record.get(key), str)]
        if missing:
            raise GptkitError(f"{path}: record {i} has no string {' or '.join(missing)}")
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


@cli.command()
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
    texts = list(prompts) or [_stdin_prompt()]
    if stream and len(texts) > 1:
        raise GptkitError("--stream takes one prompt")
    if any(not text for text in texts):
        raise GptkitError("empty prompt: give at least one character of text to continue")
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    model, tokenizer = load_model(source, device=device, dtype=torch.bfloat16 if dtype == "bf16" else None)
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


@cli.command()
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
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer, saved_format = load_model_and_prompt(source, device=resolve_device(device))
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


@cli.command()
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
    if threads:
        torch.set_num_threads(threads)
    run_server(source, host=host, port=port, max_batch=max_batch, model_id=model_name, format_name=format_name,
               device=resolve_device(device), dtype=torch.bfloat16 if dtype == "bf16" else None)


def _stdin_prompt() -> str:
    """All of stdin as one prompt, less the newline that ends it."""
    if sys.stdin.isatty():
        raise GptkitError("no prompt: give --prompt TEXT or pipe text on stdin")
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """gptkit's own warnings as one `warning: ...` line (no internal file and line); others as Python shows them."""
    if issubclass(category, GptkitWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """The console script: click's own usage errors get gptkit's `error:` prefix too, and Ctrl-C
    while plugins load is as quiet as at any other moment (see gptkit.interrupts)."""
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        warnings.showwarning = _show_warning
        with interrupts_deferred():
            plugin_manager.hook().register_commands(cli=cli)
        code = cli.main(args=argv, prog_name="gptkit", standalone_mode=False, obj={"argv": argv})
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.", err=True)
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
