"""The contract of each kind of component, and the value types components pass around.

Model components (attention, norm, feedforward) are built as `factory(model_config, **params)`.
Every other kind is built as `factory(ctx, **params)` with the `Context` below, except recipes,
which are called with the resolved config. The Protocols say what the rest of gptkit relies on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import attrs

if TYPE_CHECKING:
    import torch

    from gptkit.config import Config
    from gptkit.model import GPTConfig


@attrs.define
class Example:
    """One training example: token ids, of which the first `prompt_length` are the prompt (0 for text).
    `record` is the source record of instruction data ({instruction, input, output, ...}), which the
    instruct recipe needs to write responses.json; None for plain text."""

    input_ids: list[int]
    prompt_length: int = 0
    record: dict[str, Any] | None = None


IGNORE_INDEX = -100  # the default target value that takes no loss (PyTorch's cross_entropy default)


@attrs.define
class Batch:
    """A collated batch: inputs and targets [B, T] (long); targets hold `ignore_index` where no loss is
    taken. The collator that made the batch says which value that is, and the loss uses it."""

    inputs: "torch.Tensor"
    targets: "torch.Tensor"
    ignore_index: int = IGNORE_INDEX


@attrs.define
class Context:
    """What the run has built so far, handed to every non-model component factory."""

    model_config: "GPTConfig | None" = None
    tokenizer: "Tokenizer | None" = None
    prompt: "PromptFormat | None" = None
    device: "torch.device | str" = "cpu"
    out_dir: Path | None = None


@runtime_checkable
class Attention(Protocol):
    """nn.Module: (x [B,T,C], *, positions=None, kv_cache=None, padding_mask=None) -> y [B,T,C]; causal.

    `supports_kv_cache` (class attribute) says whether `kv_cache` is honoured; the optional
    `supports_static_kv_cache`, whether a one-token query's mask comes from `padding_mask` alone, so
    that generation may give it a `StaticKVCache` (see gptkit.generation).
    """

    supports_kv_cache: bool

    def __call__(self, x, *, positions=None, kv_cache=None, padding_mask=None): ...


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: Path) -> dict[str, Any]:
        """Write what is needed to rebuild this tokenizer into `directory`; return its component
        spec ({"name": ..., **params}), file paths relative to `directory`."""
        ...


@runtime_checkable
class Sampler(Protocol):
    """(logits [B, V] float, generator) -> next token ids [B] long."""

    def __call__(self, logits: "torch.Tensor", generator: "torch.Generator | None") -> "torch.Tensor": ...


@runtime_checkable
class PromptFormat(Protocol):
    """A record (dict) -> (prompt text, response text). Optionally `conversation(turns, instruction)
    -> prompt text`: a multi-turn chat's prompt after earlier (instruction, response) turns (see
    gptkit.conversation for what is done without it)."""

    def __call__(self, record: dict[str, Any]) -> tuple[str, str]: ...


@attrs.frozen
class PromptTemplate:
    """The prompt format most are: fixed text around a record's parts. prompt = before + instruction
    [+ input_separator + input] + response_marker; response = output. In a conversation,
    `next_turn` goes between a response and the next instruction. The built-in formats (alpaca,
    phi3, compact) are such templates; the hf plugin writes them as chat templates."""

    name: str
    before: str
    input_separator: str
    response_marker: str
    next_turn: str

    def request(self, record: dict[str, Any]) -> str:
        """The instruction and input, without the response marker (the original's `format_input`)."""
        text = self.before + record["instruction"]
        if record.get("input"):
            text += self.input_separator + record["input"]
        return text

    def __call__(self, record: dict[str, Any]) -> tuple[str, str]:
        return self.request(record) + self.response_marker, record.get("output", "")

    def conversation(self, turns: Sequence[tuple[str, str]], instruction: str) -> str:
        """The prompt of `instruction` after the earlier (instruction, response) `turns`."""
        text = self.before
        for asked, answered in turns:
            text += asked + self.response_marker + answered + self.next_turn
        return text + instruction + self.response_marker


@runtime_checkable
class Dataset(Protocol):
    """Yields Examples from a path, folder or URL."""

    def __iter__(self) -> Iterator[Example]: ...


@runtime_checkable
class Collator(Protocol):
    """list[Example] -> Batch (inputs and targets [B, T], with the ignore index the targets use)."""

    def __call__(self, examples: list[Example]) -> Batch: ...


@runtime_checkable
class Scorer(Protocol):
    """Records (dicts with instruction, input, output, model_response) -> {"mean": float or None when
    nothing was scored, "n": records scored, ...}; the instruct recipe logs the mean under
    `metric_key`. A scorer that cannot run (a judge server down) returns an "error" line, not raises."""

    metric_key: str

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]: ...


@attrs.define
class LoadedModel:
    """What a checkpoint loader returns: the model's config, its state dict in gptkit's canonical
    parameter names (see gptkit.model), the tokenizer that came with it (or None), the prompt
    format it was fine-tuned with (a config.Component, or None), and where it was read from (the
    model folder, for a run folder the checkpoint chosen; or the name given), which `gptkit export`
    uses to find the run behind a model."""

    model_config: "GPTConfig"
    state_dict: dict[str, "torch.Tensor"]
    tokenizer: "Tokenizer | None" = None
    prompt: Any = None
    origin: str | None = None


@runtime_checkable
class CheckpointLoader(Protocol):
    """Built as `factory(ctx, **params)`. `source` is a folder, file or model name; None means the
    one named by the loader's own parameters (as in `[init] checkpoint = {name = ..., model = ...}`).
    Every parameter has a default, so `gptkit.sources` can build a loader bare to ask `can_load`.
    A loader that can also write its format has `save(loaded, directory) -> Path` (`gptkit export`)."""

    def can_load(self, source: str) -> bool: ...

    def load(self, source: str | None = None) -> LoadedModel: ...

    def download(self, name: str) -> Path: ...


@runtime_checkable
class Finetune(Protocol):
    """What trains, and what a checkpoint of it holds. Built as `factory(ctx, **params)`.

    - `prepare(model)`: freeze parameters and/or add adapters, in place, before the optimizer is built.
    - `saved_weights(model)`: the weights in gptkit's canonical names (adapters merged in, no tied
      head) that checkpoints and the final model hold, so every saved folder loads with
      `gptkit generate`, `gptkit eval` and `gptkit export`.
    - `trained_state(model)`: None when the saved weights are all that training changed (resume
      loads them); else the tensors resume needs on top of the model the run sets up again (LoRA's
      adapters: its frozen base comes from `[init]` as before), stored in the training state.
    - `load_trained_state(model, state)`: put those back.
    - `save_files(model, directory, trained_state=None)`: write any extra files into a saved model
      folder (e.g. the adapter alone); may do nothing. `trained_state`, a snapshot of
      `trained_state(model)` taken earlier, stands for the model's current tensors: checkpoints/best
      is written after training has moved on from the evaluation that made it best.
    """

    def prepare(self, model: "torch.nn.Module") -> None: ...

    def saved_weights(self, model: "torch.nn.Module") -> dict[str, "torch.Tensor"]: ...

    def trained_state(self, model: "torch.nn.Module") -> dict[str, "torch.Tensor"] | None: ...

    def load_trained_state(self, model: "torch.nn.Module", state: dict[str, "torch.Tensor"]) -> None: ...

    def save_files(self, model: "torch.nn.Module", directory: Path, trained_state: dict[str, "torch.Tensor"] | None = None) -> None: ...


@runtime_checkable
class Recipe(Protocol):
    """(resolved config) -> runs the job and returns its final metrics; `metric_keys` names what it logs."""

    metric_keys: tuple[str, ...]

    def __call__(self, config: "Config") -> dict[str, Any]: ...
