"""Weights into a model: strict checks that name the offending tensor, and a model built around a
state dict without a throwaway random initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from gptkit.errors import GptkitError
from gptkit.model import GPT


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
    with torch.device("meta"):
        model = GPT(model_config)
    model.to_empty(device=device)
    load_state(model, state, source)
    if model_config.tie_weights:
        model.head.weight = model.tok_emb.weight
    return model


def check_vocab(model_config, tokenizer, where: str) -> None:
    """A tokenizer whose ids the model's embedding cannot hold is an error (an IndexError deep in
    the model otherwise)."""
    if tokenizer is not None and tokenizer.vocab_size > model_config.vocab_size:
        raise GptkitError(
            f"{where}: the model's vocab_size {model_config.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} ids ({tokenizer.name})"
        )
