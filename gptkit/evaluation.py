"""Scoring a language model: the next-token loss (shared with the training engine), the loss and
perplexity of a text (in sliding windows when it is longer than the context), and the scores of
generated responses by the `[eval] scorers`."""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import IGNORE_INDEX, Context
from gptkit.plugins import registry


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets not equal to `ignore_index` (the collator's)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)


def summed_lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The sum of the next-token cross-entropies over the targets not equal to `ignore_index`: over
    the target count of a whole batch it is `lm_loss`, however the batch is split (processes, micro-batches)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index, reduction="sum")



@torch.inference_mode()
def text_loss(model: torch.nn.Module, ids: Sequence[int], *, stride: int | None = None) -> dict[str, float]:
    """Mean cross-entropy per predicted token of `ids` (no token prepended) and its perplexity.

    Texts longer than the context are scored in windows of `context_length` inputs starting every
    `stride` tokens (default: the context); each token is scored once, in the first window that
    predicts it after the previous window's end, so overlapping windows give it more context.
    """
    context = model.config.context_length
    stride = stride or context
    if not 1 <= stride <= context:
        raise GptkitError(f"--stride must be between 1 and the context length {context}, got {stride}")
    if len(ids) < 2:
        raise GptkitError(f"the text has {len(ids)} token{'s' * (len(ids) != 1)}; at least 2 are needed to predict one")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = torch.as_tensor(list(ids), dtype=torch.long, device=device)
    total, scored, begin = 0.0, 0, 0
    while scored < len(ids) - 1:
        end = min(begin + context, len(ids) - 1)  # inputs ids[begin:end] predict ids[begin+1:end+1]
        targets = tokens[begin + 1 : end + 1].clone()
        targets[: max(0, scored - begin)] = IGNORE_INDEX  # already scored by an earlier window
        logits = model(tokens[begin:end].unsqueeze(0))
        n = int((targets != IGNORE_INDEX).sum())
        total += float(lm_loss(logits, targets.unsqueeze(0))) * n
        scored, begin = end, begin + stride
    model.train(was_training)
    loss = total / scored
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": scored}


def score_responses(records: list[dict[str, Any]], scorers: Sequence[Component], ctx: Context) -> tuple[dict[str, Any], dict[str, float]]:
    """(scores.json's content: {scorer name: its result}, {metric key: mean}) for records holding
    `model_response`. The means are logged under each scorer's metric key (`exact_match`,
    `rouge_l`, ...). A scorer whose result has an `error` (e.g. a judge server that is down) is
    reported on stderr and has no mean; the others still count."""
    results, means = {}, {}
    for spec in scorers:
        scorer = registry.scorer.build(spec, ctx)
        result = results[spec.name] = scorer(records)
        if result.get("error"):
            tqdm.write(f"warning: scorer {spec.name}: {result['error']}", file=sys.stderr)
        elif result.get("mean") is not None:
            means[scorer.metric_key] = result["mean"]
    return results, means


def result_line(result: dict) -> str:
    """One line for a scorer's result: its mean and count, or its error."""
    if result.get("error"):
        return f"failed: {result['error']}"
    groups = "".join(f", {name} {group['mean']:.3f}" for name, group in result.get("groups", {}).items())
    return f"{result['mean']:.3f} over {result['n']} responses{groups}"
