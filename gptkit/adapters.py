"""LoRA adapter files: the low-rank weight updates a `lora` fine-tuning trained, apart from its base.

`adapter.safetensors` holds, for each adapted nn.Linear `M` (its canonical module name, such as
`blocks.0.attn.qkv`), `M.lora_a` [rank, in] and `M.lora_b` [out, rank]; its metadata holds `format`
("gptkit-lora"), `version`, `rank`, `alpha` and `targets` (a JSON list). M's weight becomes
W + (alpha / rank) * lora_b @ lora_a. The file is small (rank * (in + out) numbers per layer), so a
base model and several adapters can be kept instead of several full models.

The format lives in the core, not beside the `lora` plugin, because the run setup (`[init] adapter`)
reads it: `apply_adapter(model, path)` merges a file into a plain gptkit model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from gptkit.errors import GptkitError
from gptkit.files import save_safetensors

ADAPTER = "adapter.safetensors"
FORMAT = "gptkit-lora"
FORMAT_VERSION = 1
A, B = "lora_a", "lora_b"


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in fp32 (a bf16 product would lose the small update) and returned
    in W's dtype, as a new tensor."""
    return (weight.detach().float() + scale * (b.detach().float() @ a.detach().float())).to(weight.dtype)


def save_adapter(path: str | Path, tensors: dict[str, torch.Tensor], *, rank: int, alpha: float, targets: list[str]) -> None:
    """Write `tensors` (`<module>.lora_a` / `<module>.lora_b`) and the settings that scale them."""
    metadata = {"format": FORMAT, "version": str(FORMAT_VERSION), "rank": str(rank), "alpha": repr(float(alpha)), "targets": json.dumps(targets)}
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, Path(path), metadata)


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], int, float]:
    """(tensors, rank, alpha) of an adapter file; anything that is not one is an error naming the file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise GptkitError(f"{path}: no such adapter file") from None
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise GptkitError(f"{path}: unreadable or corrupt safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise GptkitError(f"{path}: not a gptkit LoRA adapter (metadata format is {meta.get('format')!r}, expected {FORMAT!r})")
    try:
        rank, alpha = int(meta["rank"]), float(meta["alpha"])
    except (KeyError, ValueError):
        raise GptkitError(f"{path}: the metadata needs an integer rank and a number alpha, got rank={meta.get('rank')!r} alpha={meta.get('alpha')!r}") from None
    return tensors, rank, alpha


def apply_adapter(model: torch.nn.Module, path: str | Path) -> None:
    """Merge the adapter file at `path` into `model`'s weights, in place (`[init] adapter`).

    Every module the file names must be an nn.Linear of the model whose weight the update fits,
    with both tensors present and of the file's rank; else the error names the file and the tensor.
    """
    tensors, rank, alpha = read_adapter(path)
    modules = dict(model.named_modules())
    updates = {}
    for key in sorted(tensors):
        name, _, part = key.rpartition(".")
        if part not in (A, B):
            raise GptkitError(f"{path}: tensor {key}: not an adapter tensor (<module>.{A} or <module>.{B})")
        linear = modules.get(name)
        if not isinstance(linear, torch.nn.Linear):
            raise GptkitError(f"{path}: tensor {key}: the model has no nn.Linear {name!r}")
        other = f"{name}.{B if part == A else A}"
        if other not in tensors:
            raise GptkitError(f"{path}: tensor {key} has no partner {other}")
        expected = (rank, linear.in_features) if part == A else (linear.out_features, rank)
        if tuple(tensors[key].shape) != expected:
            raise GptkitError(f"{path}: tensor {key} has shape {list(tensors[key].shape)}; {name} at rank {rank} needs {list(expected)}")
        updates[name] = linear
    if "head" in updates and getattr(model.config, "tie_weights", False):
        raise GptkitError(f"{path}: tensor head.{A}: the model's head is tied to its token embedding, so it cannot take an update of its own")
    with torch.no_grad():
        for name, linear in updates.items():
            linear.weight.copy_(merged_weight(linear.weight, tensors[f"{name}.{A}"], tensors[f"{name}.{B}"], alpha / rank))
