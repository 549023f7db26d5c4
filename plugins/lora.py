"""`lora` fine-tuning (Hu et al. 2021, https://arxiv.org/abs/2106.09685): the model's weights stay
frozen and each targeted nn.Linear learns a low-rank update, W x + b + (alpha / rank) * B A dropout(x).

A [rank, in] starts Kaiming-uniform and B [out, rank] at zero, so the model is unchanged at step 0;
only A and B train (rank * (in + out) numbers per layer), which is what saves the optimizer state
and gradients of full fine-tuning. Checkpoints hold the weights with B A merged in, in gptkit's
canonical names, so they load anywhere a plain model does; the model that trains stays unmerged.
The training state holds A and B: resume rebuilds the frozen base from `[init]` as the first run did.
With `save_adapter`, every saved model folder also gets the adapter alone, in PEFT's layout
(adapter_model.safetensors + adapter_config.json, see gptkit.adapters).
"""

from __future__ import annotations

import math
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterator

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from gptkit import hookimpl
from gptkit.adapters import A, B, layer_families, merged_weight, save_adapter
from gptkit.checkpoint import model_state_for_saving
from gptkit.errors import GptkitError
from gptkit.weights import check_tensors

DEFAULT_TARGETS = ("*.attn.qkv", "*.attn.proj", "*.ff.fc", "*.ff.proj")


def _dropout_range(instance, attribute, value):
    """in [0, 1)"""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"'dropout' must be in [0, 1), got {value}")


@attrs.define
class LoRAParams:
    rank: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    alpha: float = attrs.field(default=32.0, validator=attrs.validators.gt(0.0))
    dropout: float = attrs.field(default=0.05, validator=_dropout_range)
    targets: list[str] = attrs.field(factory=lambda: list(DEFAULT_TARGETS), validator=attrs.validators.min_len(1))  # fnmatch patterns of nn.Linear names
    save_adapter: bool = False  # also write the adapter alone (PEFT's layout) into every saved model folder


class LoRALinear(nn.Module):
    """An nn.Linear plus a trainable low-rank update. It holds the wrapped layer's own weight and
    bias under the same names, so the model's state dict keeps gptkit's canonical names and only
    gains `<module>.lora_a` and `<module>.lora_b`."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.scale = alpha / rank
        like = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, linear.in_features, **like))
        self.lora_b = nn.Parameter(torch.zeros(linear.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init, as the LoRA paper's code
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the scale goes on the rank-sized activation, not the output: one output-sized tensor less
        update = F.linear(F.linear(self.dropout(x), self.lora_a) * self.scale, self.lora_b)
        return F.linear(x, self.weight, self.bias) + update

    def merged_weight(self) -> torch.Tensor:
        return merged_weight(self.weight, self.lora_a, self.lora_b, self.scale)


def adapted(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear))


class LoRAFinetune:
    """The `lora` strategy: wraps the targeted layers in `prepare`; saves them merged, trains and resumes A and B."""

    def __init__(self, rank: int, alpha: float, dropout: float, targets: list[str], save_adapter: bool):
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.targets, self.save_adapter = list(targets), save_adapter

    def targeted(self, model: nn.Module) -> list[str]:
        """The names of the nn.Linear modules the target patterns match; a pattern matching none is an error."""
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        unmatched = [p for p in self.targets if not any(fnmatchcase(name, p) for name in linears)]
        if unmatched:
            raise GptkitError(
                f"train.finetune.targets: {', '.join(map(repr, unmatched))} match{'es' * (len(unmatched) == 1)} no nn.Linear "
                f"of the model; its nn.Linear modules are {layer_families(linears)}"
            )
        chosen = [name for name in linears if any(fnmatchcase(name, p) for p in self.targets)]
        if "head" in chosen and getattr(model.config, "tie_weights", False):
            raise GptkitError(
                "train.finetune.targets: 'head' is tied to the token embedding (model.tie_weights), so a model file "
                "cannot hold an update of the head alone; leave it out of the targets"
            )
        return chosen

    def prepare(self, model: nn.Module) -> None:
        model.requires_grad_(False)
        for name in self.targeted(model):
            model.set_submodule(name, LoRALinear(model.get_submodule(name), self.rank, self.alpha, self.dropout))

    def saved_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = model_state_for_saving(model)
        for name, layer in adapted(model):
            state[f"{name}.weight"] = layer.merged_weight()
            del state[f"{name}.{A}"], state[f"{name}.{B}"]
        return state

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {f"{name}.{part}": getattr(layer, part).detach() for name, layer in adapted(model) for part in (A, B)}

    def load_trained_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        own = self.trained_state(model)
        found = {k: tuple(v.shape) for k, v in state.items()}
        check_tensors(found, {k: tuple(v.shape) for k, v in own.items()}, "run.resume: the checkpoint's LoRA adapter does not fit train.finetune", "train.finetune")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(state[key])

    def save_files(self, model: nn.Module, directory: Path, trained_state: dict[str, torch.Tensor] | None = None) -> None:
        if self.save_adapter:
            tensors = self.trained_state(model) if trained_state is None else trained_state
            save_adapter(directory, tensors, rank=self.rank, alpha=self.alpha, dropout=self.dropout, n_layers=model.config.n_layers)


@hookimpl
def register_components(registry):
    registry.finetune.register(
        "lora",
        lambda ctx, **params: LoRAFinetune(**params),
        params=LoRAParams,
        doc="Frozen weights plus trained low-rank updates of the targeted nn.Linear layers; checkpoints hold them merged.",
    )
