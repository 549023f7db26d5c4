"""SOURCE, wherever a command takes one: a run folder, a checkpoint or model folder, or a model name.

gptkit's own folders are read here; anything else is offered to each registered checkpoint loader
(`can_load(source)`), so a plugin can add a format or a hub.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

from gptkit.checkpoint import is_model_dir, load_model_files
from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context, LoadedModel
from gptkit.registry import registry

STEP_DIR = re.compile(r"step-(\d+)$")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoints/step-N` folder of a run, or None."""
    steps = [
        (int(m.group(1)), p)
        for p in (run_dir / "checkpoints").glob("step-*")
        if (m := STEP_DIR.search(p.name)) and is_model_dir(p)
    ]
    return max(steps)[1] if steps else None


def load_source(source: str | Path, ctx: Context | None = None) -> LoadedModel:
    """The model config, weights and tokenizer that `source` names."""
    ctx = ctx or Context()
    path = Path(source)
    if path.is_dir():
        if is_model_dir(path):
            return load_model_files(path, ctx)
        checkpoint = latest_checkpoint(path)
        if checkpoint is not None:
            return load_model_files(checkpoint, ctx)
    for entry in registry.checkpoint.entries():
        loader = registry.checkpoint.build(Component(entry.name), ctx)
        if loader.can_load(str(source)):
            return loader.load(str(source))
    known = ", ".join(registry.checkpoint.names()) or "none besides gptkit's own"
    raise GptkitError(
        f"{source}: not a model source (a run folder, a checkpoint or model folder, or a model name; "
        f"checkpoint loaders: {known})"
    )


def check_tensors(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], where: str, why: str) -> None:
    """Every expected tensor present with its shape and nothing else; else one error naming them.

    `why` says where the expected shapes come from (e.g. "hparams.json").
    """

    def listed(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")

    missing = [n for n in expected if n not in found]
    extra = sorted(n for n in found if n not in expected)
    misshapen = [
        f"{n} {list(found[n])} ({why} implies {list(shape)})"
        for n, shape in expected.items()
        if n in found and tuple(found[n]) != tuple(shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensor{'s' * (len(missing) > 1)} {listed(missing)}")
    if extra:
        problems.append(f"unexpected tensor{'s' * (len(extra) > 1)} {listed(extra)}")
    if misshapen:
        problems.append(f"wrong shape{'s' * (len(misshapen) > 1)}: {listed(misshapen)}")
    if problems:
        raise GptkitError(f"{where}: {'; '.join(problems)}")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load weights strictly; a missing, extra or misshapen tensor is an error naming it."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_tensors({k: tuple(v.shape) for k, v in state.items()}, expected, f"{source}: weights do not fit the model", "the model")
    model.load_state_dict(state, strict=True)


def model_with_weights(model_config, state: dict[str, torch.Tensor], source, device: str | torch.device = "cpu"):
    """A GPT holding `state`, built without a throwaway random initialisation (no 2x memory).

    Its parameters are allocated empty on `device` and filled from `state`, so component plugins
    must keep any buffer they need in the state dict (persistent) or rebuild it lazily.
    """
    from gptkit.model import GPT

    with torch.device("meta"):
        model = GPT(model_config)
    model.to_empty(device=device)
    load_state(model, state, source)
    if model_config.tie_weights:
        model.head.weight = model.tok_emb.weight
    return model


def load_model(source: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model in eval mode, tokenizer) from any SOURCE."""
    loaded = load_source(source, Context(device=device))
    model = model_with_weights(loaded.model_config, loaded.state_dict, source, device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model.eval(), loaded.tokenizer
