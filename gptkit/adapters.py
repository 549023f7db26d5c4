"""LoRA adapter files: the low-rank weight updates a `lora` fine-tuning trained, apart from its base.

gptkit writes PEFT's layout (https://github.com/huggingface/peft), so `peft.PeftModel.from_pretrained`
puts an adapter onto the folder `gptkit export --format hf` writes of its base: a folder with

    adapter_model.safetensors   `base_model.model.<module>.lora_A.weight` [rank, in] and
                                `.lora_B.weight` [out, rank] for each adapted layer
    adapter_config.json         peft_type LORA, r, lora_alpha, lora_dropout, target_modules, ...

where <module> is Hugging Face GPT-2's name of the layer (`transformer.h.0.attn.c_attn` for gptkit's
`blocks.0.attn.qkv`, `lm_head` for `head`; `fan_in_fan_out` is true, as GPT-2's layers are Conv1D),
or gptkit's own name for a layer GPT-2 has none for (an attention plugin's own layers), which only
gptkit reads. The layer's weight becomes W + (lora_alpha / r) * B @ A (lora_alpha / sqrt(r) with
`use_rslora`). The files are small (r * (in + out) numbers per layer), so a base model and several
adapters can be kept instead of several full models.

Read back (`[init] adapter`, `apply_adapter`): that layout, whoever wrote it (an adapter trained with
PEFT on GPT-2 included), and gptkit's earlier `adapter.safetensors` (gptkit's names, `<module>.lora_a`
and `.lora_b`, with rank and alpha in its metadata). What has no counterpart in gptkit's model (DoRA,
trained biases, embedding adapters, layers gptkit has no name for) is refused in one line naming it.

The format lives in the core, not beside the `lora` plugin, because the run setup reads it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable

import attrs
import torch
from safetensors import SafetensorError, safe_open

from gptkit.errors import GptkitError
from gptkit.files import save_safetensors
from gptkit.gpt2_files import GPT2_BLOCK_LINEARS

PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # what PEFT's saved names start with (PeftModel -> LoraModel -> the model)
LEGACY = "adapter.safetensors"  # the single file earlier gptkit wrote
LEGACY_FORMAT = "gptkit-lora"
A, B = "lora_a", "lora_b"  # the LoRA layer's own parameter names (gptkit_plugins.lora), as the training state holds them


@attrs.frozen
class Update:
    """One layer's low-rank update: W += scale * b @ a (on `base` instead of W when the file holds the
    layer's whole weight, as PEFT saves a targeted lm_head). `names` are the file's tensor names."""

    module: str  # gptkit's module name
    a: torch.Tensor
    b: torch.Tensor
    rank: int
    scale: float
    names: tuple[str, str]
    base: torch.Tensor | None = None  # [out, in], as gptkit's nn.Linear holds it


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in fp32 (a bf16 product would lose the small update) and returned
    in W's dtype, as a new tensor."""
    return (weight.detach().float() + scale * (b.detach().float() @ a.detach().float())).to(weight.dtype)


def layer_families(names: Iterable[str]) -> str:
    """Module names with layer numbers folded (`blocks.*.attn.qkv`), for messages about a 48-layer model."""
    folded = dict.fromkeys(".".join("*" if part.isdigit() else part for part in name.split(".")) for name in names)
    return ", ".join(folded)


def few(names: Iterable[str]) -> str:
    """Up to three names in full, more with their layer numbers folded."""
    names = list(names)
    return ", ".join(names) if len(names) <= 3 else layer_families(names)


# --- names: gptkit's modules <-> Hugging Face GPT-2's ------------------------------------------------

HF_BLOCK = re.compile(r"(?:transformer\.)?h\.(\d+)\.(.+)")


def hf_module(name: str) -> str | None:
    """GPT2LMHeadModel's name of gptkit's nn.Linear `name`; None for a layer GPT-2 does not have."""
    if name == "head":
        return "lm_head"
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    ours = {g: hf for hf, g in GPT2_BLOCK_LINEARS}
    return f"transformer.h.{match[1]}.{ours[match[2]]}" if match and match[2] in ours else None


def gptkit_module(name: str) -> str | None:
    """gptkit's name of a GPT-2 layer (`transformer.h.0.mlp.c_fc`, or without `transformer.`); a
    name already in gptkit's spelling (`blocks.0...`) stays; None for anything else."""
    if name == "lm_head":
        return "head"
    if name.startswith("blocks."):
        return name
    match = HF_BLOCK.fullmatch(name)
    theirs = dict(GPT2_BLOCK_LINEARS)
    return f"blocks.{match[1]}.{theirs[match[2]]}" if match and match[2] in theirs else None


def target_modules(modules: list[str], n_layers: int) -> list[str]:
    """PEFT's `target_modules` for exactly these layers (PEFT's names). PEFT takes a layer whose
    name ends with `.` + an entry: a kind of layer adapted in every block is written once by its
    suffix (`attn.c_proj`, which, unlike PEFT's usual `c_proj`, leaves `mlp.c_proj` alone); the
    layers of a kind adapted in some blocks only, and any other layer, by their full names."""
    blocks: dict[str, list[int]] = {}
    entries = []
    for name in modules:
        match = HF_BLOCK.fullmatch(name)
        if match:
            blocks.setdefault(match[2], []).append(int(match[1]))
        else:
            entries.append(name)
    for kind, layers in blocks.items():
        entries += [kind] if sorted(layers) == list(range(n_layers)) else [f"transformer.h.{i}.{kind}" for i in sorted(layers)]
    return sorted(entries)


# --- writing ------------------------------------------------------------------------------------


def save_adapter(directory: str | Path, tensors: dict[str, torch.Tensor], *, rank: int, alpha: float, dropout: float, n_layers: int) -> None:
    """Write `tensors` (`<module>.lora_a` / `<module>.lora_b`, gptkit's names, as LoRA's training
    state holds them) into `directory` in PEFT's layout, with the settings that scale them."""
    modules = sorted({key.rpartition(".")[0] for key in tensors})
    theirs = {m: hf_module(m) or m for m in modules}
    out = {}
    for m in modules:
        out[f"{PEFT_PREFIX}{theirs[m]}.lora_A.weight"] = tensors[f"{m}.{A}"].detach().cpu().contiguous()
        out[f"{PEFT_PREFIX}{theirs[m]}.lora_B.weight"] = tensors[f"{m}.{B}"].detach().cpu().contiguous()
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "target_modules": target_modules(list(theirs.values()), n_layers),
        "fan_in_fan_out": any(name.startswith("transformer.") for name in theirs.values()),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": None,
    }
    directory = Path(directory)
    save_safetensors(out, directory / PEFT_WEIGHTS, {"format": "pt"})
    (directory / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# --- reading ------------------------------------------------------------------------------------


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except FileNotFoundError:
        raise GptkitError(f"{path}: no such adapter file") from None
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise GptkitError(f"{path}: unreadable or corrupt safetensors file ({exc})") from None


def read_adapter(path: str | Path) -> list[Update]:
    """The updates of an adapter: a folder (PEFT's layout, or one holding gptkit's earlier
    adapter.safetensors) or a file (PEFT's adapter_model.safetensors, with its adapter_config.json
    beside it, or adapter.safetensors). Anything else is an error naming the file."""
    path = Path(path)
    if path.is_dir():
        if (path / PEFT_CONFIG).is_file():
            return read_peft(path / PEFT_WEIGHTS, path / PEFT_CONFIG)
        if (path / LEGACY).is_file():
            return read_legacy(path / LEGACY)
        raise GptkitError(f"{path}: no LoRA adapter here (expected {PEFT_CONFIG} + {PEFT_WEIGHTS}, or {LEGACY})")
    tensors, meta = read_safetensors(path)
    if meta.get("format") == LEGACY_FORMAT:
        return read_legacy(path, tensors, meta)
    if (path.parent / PEFT_CONFIG).is_file():
        return read_peft(path, path.parent / PEFT_CONFIG, tensors)
    raise GptkitError(
        f"{path}: not a LoRA adapter gptkit reads (no {PEFT_CONFIG} beside it, and its metadata format is "
        f"{meta.get('format')!r}, not gptkit's earlier {LEGACY_FORMAT!r})"
    )


def read_legacy(path: Path, tensors: dict[str, torch.Tensor] | None = None, meta: dict[str, str] | None = None) -> list[Update]:
    """gptkit's earlier adapter.safetensors: `<module>.lora_a` / `.lora_b`; rank and alpha in the metadata."""
    if tensors is None or meta is None:
        tensors, meta = read_safetensors(path)
    try:
        rank, alpha = int(meta["rank"]), float(meta["alpha"])
    except (KeyError, ValueError):
        raise GptkitError(f"{path}: the metadata needs an integer rank and a number alpha, got rank={meta.get('rank')!r} alpha={meta.get('alpha')!r}") from None
    updates = []
    for key in sorted(tensors):
        module, _, part = key.rpartition(".")
        if part not in (A, B):
            raise GptkitError(f"{path}: tensor {key}: not an adapter tensor (<module>.{A} or <module>.{B})")
        other = f"{module}.{B if part == A else A}"
        if other not in tensors:
            raise GptkitError(f"{path}: tensor {key} has no partner {other}")
        if part == A:
            updates.append(Update(module, tensors[key], tensors[other], rank, alpha / rank, (key, other)))
    return updates


PEFT_TENSOR = re.compile(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|base_layer)(?:\.[\w-]+)?\.weight")


def read_peft(weights: Path, config_path: Path, tensors: dict[str, torch.Tensor] | None = None) -> list[Update]:
    """A LoRA adapter in PEFT's layout. Every setting gptkit cannot reproduce by merging W + s B A
    into its model is named, all in one error line."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise GptkitError(f"{config_path}: not a readable adapter config ({exc})") from None
    if config.get("peft_type") != "LORA":
        raise GptkitError(f"{config_path}: peft_type {config.get('peft_type')!r}: gptkit reads LoRA adapters only")
    if not weights.is_file() and weights.with_suffix(".bin").is_file():
        raise GptkitError(f"{weights.with_suffix('.bin')}: a pickled adapter, which gptkit does not unpickle; save it with safetensors (PEFT's default)")
    if tensors is None:
        tensors, _ = read_safetensors(weights)
    alpha = config.get("lora_alpha")
    if not isinstance(config.get("r"), int) or not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise GptkitError(f"{config_path}: needs an integer r and a number lora_alpha, got r={config.get('r')!r} lora_alpha={alpha!r}")

    problems = []
    if config.get("use_dora"):
        problems.append("use_dora = true (DoRA rescales each weight's columns, a merge gptkit does not do)")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append(f"bias = {config.get('bias')!r}, lora_bias = {bool(config.get('lora_bias'))} (trained biases)")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save = {config['modules_to_save']} (whole layers trained alongside)")
    pairs: dict[str, dict[str, str]] = {}
    embeddings, other = [], []
    for key in sorted(tensors):
        match = PEFT_TENSOR.fullmatch(key)
        name = key.removeprefix(PEFT_PREFIX)
        if match:
            pairs.setdefault(match[1], {})[match[2]] = key
        elif ".lora_embedding_" in name:
            embeddings.append(name.partition(".lora_embedding_")[0])
        elif ".lora_magnitude_vector" not in name or not config.get("use_dora"):
            other.append(name)
    if embeddings:
        problems.append(f"embedding adapters: {layer_families(embeddings)}")
    if other:
        problems.append(f"tensors that are no LoRA A or B: {layer_families(other)}")
    unnamed = [name for name in pairs if gptkit_module(name) is None]
    if unnamed:
        problems.append(f"targets gptkit has no name for: {layer_families(unnamed)}")
    if problems:
        raise GptkitError(f"{weights}: cannot apply this adapter to gptkit's GPT: " + "; ".join(problems))

    alphas = config.get("alpha_pattern") or {}
    updates = []
    for name, parts in pairs.items():
        if not {"lora_A", "lora_B"} <= set(parts):
            have = parts.get("lora_A") or parts.get("lora_B") or parts["base_layer"]
            raise GptkitError(f"{weights}: tensor {have} has no partner lora_{'B' if 'lora_A' in parts else 'A'}")
        a, b = tensors[parts["lora_A"]], tensors[parts["lora_B"]]
        rank = a.shape[0]
        layer_alpha = float(next((v for k, v in alphas.items() if re.match(rf"(.*\.)?({k})$", name)), alpha))
        scale = layer_alpha / math.sqrt(rank) if config.get("use_rslora") else layer_alpha / rank
        base = tensors.get(parts.get("base_layer"))
        if base is not None and HF_BLOCK.fullmatch(name):
            base = base.t()  # GPT-2's Conv1D holds [in, out]
        updates.append(Update(gptkit_module(name), a, b, rank, scale, (parts["lora_A"], parts["lora_B"]), base))
    return updates


def apply_adapter(model: torch.nn.Module, path: str | Path) -> None:
    """Merge the adapter at `path` (see `read_adapter`) into `model`'s weights, in place (`[init] adapter`).

    Every layer it names must be an nn.Linear of the model whose weight the update fits; the layers
    the model lacks are named together, a misfit names the tensor."""
    updates = read_adapter(path)
    modules = dict(model.named_modules())
    missing = [u for u in updates if not isinstance(modules.get(u.module), torch.nn.Linear)]
    if missing:
        raise GptkitError(f"{path}: tensor{'s' * (len(missing) > 1)} {few(u.names[0] for u in missing)}: the model has no nn.Linear {few(u.module for u in missing)}")
    for u in updates:
        linear = modules[u.module]
        if u.base is not None and u.base.shape != linear.weight.shape:
            raise GptkitError(f"{path}: the base weight of {u.names[0].rpartition('.lora_A')[0]} has shape {list(u.base.shape)}; {u.module} needs {list(linear.weight.shape)}")
        for tensor, name, expected in ((u.a, u.names[0], (u.rank, linear.in_features)), (u.b, u.names[1], (linear.out_features, u.rank))):
            if tuple(tensor.shape) != expected:
                raise GptkitError(f"{path}: tensor {name} has shape {list(tensor.shape)}; {u.module} at rank {u.rank} needs {list(expected)}")
    head = next((u for u in updates if u.module == "head"), None)
    if head is not None and getattr(model.config, "tie_weights", False):
        raise GptkitError(f"{path}: tensor {head.names[0]}: the model's head is tied to its token embedding, so it cannot take an update of its own")
    with torch.no_grad():
        for u in updates:
            linear = modules[u.module]
            weight = linear.weight if u.base is None else u.base.to(linear.weight.dtype)
            linear.weight.copy_(merged_weight(weight, u.a, u.b, u.scale))
