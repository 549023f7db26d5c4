"""Text generation: prompts' tokens in, new tokens out, one sampler call per step.

The model runs over the prompts once (prefill), then over one new token per row at a time (decode),
reading earlier keys and values from a preallocated cache per block: on CUDA a `StaticKVCache`,
whose fixed-shape steps are captured in a CUDA graph, where the attention supports it, else a
growing `KVCache`. Attention plugins that do not support a cache (`supports_kv_cache = False`) get
the whole sequence recomputed every step.

A batch of prompts of different lengths is left-padded: `padding_mask` [B, T_total] (True on real
tokens) hides the padding from attention and `positions` count from each row's first real token, so
each row gets the same tokens as when generated alone. A row stops at end-of-text (which is not
part of its new tokens); the batch stops when every row has stopped, after `max_new_tokens`, or when
the context is full (with a message). A prompt longer than the context keeps its last tokens
(with a warning), leaving room for the new ones.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import weakref
from typing import Callable, Iterator, Sequence

import attrs
import torch
from torch import nn

from gptkit.config import Component
from gptkit.errors import GptkitError
from gptkit.interfaces import Context
from gptkit.plugins import registry
from gptkit.weights import check_vocab

log = logging.getLogger(__name__)


class KVCache:
    """Keys and values of one attention layer, preallocated for `max_length` positions.

    `update(k, v)` writes k, v [B, H, T, D] after what it holds and returns all keys and values so
    far (views into the preallocated buffers: nothing is copied but the new entries).
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.length = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            b, h, _, d = k.shape
            self.keys = k.new_empty(b, h, self.max_length, d)
            self.values = v.new_empty(b, h, self.max_length, v.shape[-1])
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache full: {end} positions, room for {self.max_length}")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def _onednn_usable(weight: torch.Tensor) -> bool:
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if weight.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return weight.dtype == torch.float32


# nn.Linear -> (its weight, what that weight was then, the packed copy); kept off the layer so
# copying or pickling a model never meets the opaque oneDNN tensors.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _packed_weight(linear: nn.Linear) -> torch.Tensor:
    """The weight reordered for oneDNN, cached until the weight changes."""
    w = linear.weight
    key = (w.data_ptr(), w._version, w.dtype, tuple(w.shape))
    cached = _PACKED.get(linear)
    if cached is None or cached[0]() is not w or cached[1] != key:
        cached = _PACKED[linear] = (weakref.ref(w), key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1))
    return cached[2]


@contextlib.contextmanager
def packed_linears(model: nn.Module, keep: bool = True):
    """On CPU, run every nn.Linear through oneDNN with its weight prepacked for small batches.

    Decoding multiplies a few rows by every weight: PyTorch's default CPU GEMM reads the weights at
    about half the memory bandwidth for one row, and worse for eight; a prepacked oneDNN weight is
    about twice as fast (see benchmarks/bench_generate.py). The packed copy costs the weights' memory
    again; it is kept for the next call when `keep` (until a weight changes), else dropped on exit. Anything but fp32/bf16 CPU weights, or a torch without these ops, runs as is.
    """
    linears = [m for m in model.modules() if type(m) is nn.Linear and _onednn_usable(m.weight)]
    try:
        for linear in linears:
            linear.forward = _packed_forward(_packed_weight(linear), linear.bias)
    except (AttributeError, RuntimeError):  # ops missing or refused: plain layers
        for linear in linears:
            linear.__dict__.pop("forward", None)
        linears = []
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward
            if not keep:
                _PACKED.pop(linear, None)


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def supports_kv_cache(model) -> bool:
    return all(getattr(block.attn, "supports_kv_cache", False) for block in model.blocks)


@attrs.define
class Completion:
    """One prompt's result: its token ids as used (cut to fit the context), the new ids (end-of-text
    excluded) and why it stopped: "eos", "max_new_tokens" or "context" (the context was full)."""

    prompt_ids: list[int]
    new_ids: list[int]
    stop_reason: str


def fit_prompt(prompt_ids: Sequence[int], context_length: int, max_new_tokens: int) -> list[int]:
    """A prompt longer than the context keeps its last tokens, leaving room for `max_new_tokens`."""
    prompt_ids = list(prompt_ids)
    if len(prompt_ids) <= context_length:
        return prompt_ids
    keep = max(1, context_length - max_new_tokens)
    log.warning(
        "prompt of %d tokens is longer than the context (%d): keeping its last %d tokens",
        len(prompt_ids), context_length, keep,
    )
    return prompt_ids[-keep:]


class StaticKVCache(KVCache):
    """A KVCache whose decoding steps keep fixed shapes, so that a step can be captured in a CUDA graph.

    The prefill goes as in KVCache. After it, `update` of one token writes it at `slot` (a
    one-element tensor the decoding loop moves, which a captured graph reads) and returns the whole
    buffers; the loop's padding mask is False on the slots not written yet, so attention must take a
    one-token query's mask from `padding_mask` alone: attention plugins say they do with the class
    attribute `supports_static_kv_cache = True`. `length` counts the prefill only.
    """

    def __init__(self, max_length: int, slot: torch.Tensor):
        super().__init__(max_length)
        self.slot = slot

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:  # zeros: masked slots weigh 0, and 0 times stale memory could be NaN
            b, h, _, d = k.shape
            self.keys, self.values = k.new_zeros(b, h, self.max_length, d), v.new_zeros(b, h, self.max_length, v.shape[-1])
        if k.shape[2] != 1 or self.length == 0:
            return super().update(k, v)
        self.keys.index_copy_(2, self.slot, k)
        self.values.index_copy_(2, self.slot, v)
        return self.keys, self.values


def supports_static_kv_cache(model) -> bool:
    return all(getattr(block.attn, "supports_static_kv_cache", False) for block in model.blocks)


def decode_step(model, token: torch.Tensor, position: torch.Tensor, caches, padding_mask: torch.Tensor) -> torch.Tensor:
    """One decoding step over fixed-shape tensors (what a CUDA graph captures): fp32 logits [B, vocab]."""
    return model(token, positions=position, kv_caches=caches, padding_mask=padding_mask, last_only=True)[:, -1].float()


def cuda_graphed(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """`step` (reading and writing only tensors that stay put) captured in a CUDA graph: each call
    replays every kernel of the step in one launch and returns the same output tensor, overwritten.
    Warm-up runs on a side stream first, as capture requires; they recompute the step's own values."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


def left_pad(prompts: Sequence[Sequence[int]], total: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts left-padded to the longest, in [B, total] ids (the columns after them left for new
    tokens); positions counting from each row's first real token (0 on padding); and the mask of
    real tokens, True from each row's first real token on (new tokens included)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), total, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) : width] = torch.as_tensor(prompt, dtype=torch.long)
    first = torch.tensor([width - len(p) for p in prompts], device=device)[:, None]
    columns = torch.arange(total, device=device)[None, :]
    return ids.to(device), (columns - first).clamp(min=0), columns >= first


@torch.no_grad()
def decode_steps(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    steps: int,
    sampler: Callable,
    generator: torch.Generator | None = None,
    use_cache: bool | None = None,
    static_cache: bool | None = None,
    pack_weights: bool = True,
    compile: bool = False,
) -> Iterator[torch.Tensor]:
    """Yields the next token of every row [B], `steps` times. Prompts must fit the context with the
    new tokens. Rows are left-padded; nothing here knows about end-of-text.

    `static_cache` (default: on CUDA, when every attention supports it) decodes through
    `StaticKVCache`s with fixed-shape steps; on CUDA the step is then captured in a CUDA graph once
    and replayed, so a small batch is bound by memory bandwidth rather than by kernel launches. On
    CPU it gives the same tokens but no speed (a little slower at batch 8: every step attends over
    the whole buffer), so the growing cache stays the default there. `compile`: the decoding
    step runs through torch.compile (compiled once per model and shapes; with the static cache on
    CUDA, inside the graph). `pack_weights`: see `packed_linears` (CPU, not with `compile`).
    """
    if steps <= 0:
        return
    device = next(model.parameters()).device
    use_cache = supports_kv_cache(model) if use_cache is None else use_cache
    if static_cache is None:  # on CPU, with no graphs to gain, attending over the whole buffer measured slower
        static_cache = device.type == "cuda" and supports_static_kv_cache(model)
    static = use_cache and static_cache
    lengths = [len(p) for p in prompts]
    width, total = max(lengths), max(lengths) + steps
    if total > model.config.context_length:
        raise ValueError(f"{total} tokens do not fit the context of {model.config.context_length}")
    ids, positions, real = left_pad(prompts, total, device)
    padding_mask = real if min(lengths) < width else None

    def forward(start: int, end: int, caches, run=model) -> torch.Tensor:
        mask = padding_mask[:, :end] if padding_mask is not None else None
        logits = run(ids[:, start:end], positions=positions[:, start:end], kv_caches=caches, padding_mask=mask, last_only=True)
        return logits[:, -1].float()

    was_training = model.training
    model.eval()
    if static:
        # The step's inputs live in these buffers, moved in place between steps.
        slot = torch.zeros(1, dtype=torch.long, device=device)
        token, position = ids[:, :1].clone(), positions[:, :1].clone()
        visible = real.clone()  # True on real tokens written so far
        visible[:, width:] = False
        caches = [StaticKVCache(total, slot) for _ in model.blocks]
        static_step = _compiled(model, static=True) if compile else functools.partial(decode_step, model)
        step = functools.partial(static_step, token, position, caches, visible)
    else:
        caches = [KVCache(total) for _ in model.blocks] if use_cache else None
        one_token = _compiled(model, static=False) if compile and use_cache else model
    try:
        # A model in training changes its weights before the next call: no use keeping packed copies.
        with packed_linears(model, keep=not was_training) if pack_weights and not compile else contextlib.nullcontext():
            logits = forward(0, width, caches)
            for n in range(steps):
                next_ids = sampler(logits, generator)
                yield next_ids
                if n + 1 == steps:
                    break
                end = width + n + 1
                if static:
                    token.copy_(next_ids[:, None])
                    position.copy_(positions[:, end - 1 : end])
                    visible[:, end - 1] = True
                    slot.fill_(end - 1)
                    if n == 0 and device.type == "cuda":
                        step = cuda_graphed(step)
                    logits = step()
                else:
                    ids[:, end - 1] = next_ids
                    logits = forward(end - 1, end, caches, one_token) if use_cache else forward(0, end, None)
    finally:
        model.train(was_training)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model: nn.Module, static: bool):
    """The model's one-token step through torch.compile: `decode_step` with fixed shapes for the
    static cache, else the model with dynamic shapes (the keys grow every step); compiled once."""
    compiled = _COMPILED.setdefault(model, {})
    if static not in compiled:
        compiled[static] = torch.compile(lambda *a: decode_step(model, *a)) if static else torch.compile(model, dynamic=True)
    return compiled[static]


class Generation:
    """Generation after each prompt (token ids) as one batch. Iterating runs it, yielding each
    step's new token of every row (None once a row has stopped); `completions` holds the results."""

    def __init__(
        self,
        model,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        sampler: Callable,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool | None = None,
        static_cache: bool | None = None,
        pack_weights: bool = True,
        compile: bool = False,
    ):
        context = model.config.context_length
        prompts = [fit_prompt(p, context, max_new_tokens) for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GptkitError("empty prompt: give at least one token of text to continue")
        self.model, self.sampler, self.eos_id, self.generator = model, sampler, eos_id, generator
        self.step_options = dict(use_cache=use_cache, static_cache=static_cache, pack_weights=pack_weights, compile=compile)
        self.max_new_tokens = max_new_tokens
        self.steps = min(max_new_tokens, context - max(len(p) for p in prompts))
        reason = "max_new_tokens" if self.steps == max_new_tokens else "context"
        self.completions = [Completion(p, [], reason) for p in prompts]

    def __iter__(self) -> Iterator[list[int | None]]:
        rows = self.completions
        steps = decode_steps(
            self.model, [c.prompt_ids for c in rows], steps=self.steps, sampler=self.sampler,
            generator=self.generator, **self.step_options,
        )
        for next_ids in steps:
            tokens: list[int | None] = next_ids.tolist()
            for c, token in zip(rows, tokens):
                if c.stop_reason == "eos" or token == self.eos_id:
                    c.stop_reason = "eos"
                else:
                    c.new_ids.append(token)
            yield [None if c.stop_reason == "eos" else t for c, t in zip(rows, tokens)]
            if all(c.stop_reason == "eos" for c in rows):
                steps.close()
                break
        if any(c.stop_reason == "context" for c in rows):
            log.warning(
                "stopped after %d new tokens: the context of %d tokens is full (%d asked for)",
                self.steps, self.model.config.context_length, self.max_new_tokens,
            )


    def run(self) -> list[Completion]:
        """Generate to the end; the completions."""
        for _ in self:
            pass
        return self.completions


def generate_ids(model, prompts: Sequence[Sequence[int]], **kwargs) -> list[Completion]:
    """Generate after each prompt (token ids) as one batch; kwargs as `Generation`."""
    return Generation(model, prompts, **kwargs).run()


class DecodingRows:
    """Rows decoding together while others join and leave between steps: the KV cache of continuous
    batching (gptkit.serve).

    `add(prompts)` runs new prompts once (one left-padded forward) and returns their next-token
    logits; `step(tokens)` feeds one token to every row and returns the next logits; `keep(rows)`
    drops the other rows. Each block's `KVCache` holds the rows right-aligned: every row's newest
    token is in the same column, a shorter row is padded on the left (hidden by `padding_mask`) and
    `positions` count each row's own tokens, so a row gets the tokens it would get alone, whatever
    rows share its steps. Adding or dropping rows copies the caches once into new buffers (dropping
    the columns no row needs any more); steps write one column in place, the buffers growing by
    doubling. Rows must stay within the context; the attention must support the KV cache; run it
    under torch.no_grad() with the model in eval mode.
    """

    def __init__(self, model):
        self.model = model
        self.lengths: list[int] = []  # tokens of each row so far
        self.caches: list[KVCache] = []  # one per block, every row ending at column `caches[i].length`

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return self.caches[0].length if self.caches else 0

    def add(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill `prompts` as new rows, after the current ones: their next-token logits [len(prompts), V] (fp32)."""
        if not prompts or min(len(p) for p in prompts) == 0:
            raise ValueError("every new row needs at least one token")
        width = max(len(p) for p in prompts)
        if width > self.model.config.context_length:
            raise ValueError(f"a prompt of {width} tokens does not fit the context of {self.model.config.context_length}")
        ids, positions, real = left_pad(prompts, width, next(self.model.parameters()).device)
        caches = [KVCache(width) for _ in self.model.blocks]
        mask = real if min(len(p) for p in prompts) < width else None
        logits = self.model(ids, positions=positions, kv_caches=caches, padding_mask=mask, last_only=True)[:, -1].float()
        pieces = [[(c.keys, c.values)] for c in caches]
        if self.caches:
            pieces = [[(old.keys[:, :, : old.length], old.values[:, :, : old.length]), *new] for old, new in zip(self.caches, pieces)]
        self.lengths += [len(p) for p in prompts]
        self._rebuild(pieces)
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (indices into the current rows, in the order given)."""
        rows = list(rows)
        if rows == list(range(len(self))):
            return
        self.lengths = [self.lengths[i] for i in rows]
        if not rows:
            self.caches = []
            return
        index = torch.tensor(rows, device=self.caches[0].keys.device)
        self._rebuild([[(c.keys[index, :, : c.length], c.values[index, :, : c.length])] for c in self.caches])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (`tokens` [B]): the next-token logits [B, V] (fp32)."""
        if max(self.lengths) >= self.model.config.context_length:
            raise ValueError(f"a row holds {max(self.lengths)} tokens: the context of {self.model.config.context_length} is full")
        if self.width == self.caches[0].max_length:
            self._rebuild([[(c.keys[:, :, : c.length], c.values[:, :, : c.length])] for c in self.caches])
        device = tokens.device
        lengths = torch.tensor(self.lengths, device=device)[:, None]
        columns = torch.arange(self.width + 1, device=device)[None, :]
        mask = columns >= self.width - lengths if min(self.lengths) < self.width else None
        logits = decode_step(self.model, tokens[:, None], lengths, self.caches, mask)
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def _rebuild(self, pieces: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """New caches stacking each layer's (keys, values) pieces [b, H, w, D] on the rows, right-aligned
        at the longest row, with room to grow: a piece's columns before that are padding for every row."""
        width = max(self.lengths)
        capacity = min(self.model.config.context_length, max(2 * width, width + 16))
        caches = []
        for layer in pieces:
            keys, values = layer[0]
            cache = KVCache(capacity)
            cache.keys = keys.new_zeros(len(self), keys.shape[1], capacity, keys.shape[3])
            cache.values = values.new_zeros(len(self), values.shape[1], capacity, values.shape[3])
            row = 0
            for keys, values in layer:
                n, w = keys.shape[0], min(keys.shape[2], width)
                cache.keys[row : row + n, :, width - w : width] = keys[:, :, keys.shape[2] - w :]
                cache.values[row : row + n, :, width - w : width] = values[:, :, values.shape[2] - w :]
                row += n
            cache.length = width
            caches.append(cache)
        self.caches = caches


class TextDecoder:
    """Turns token ids into text pieces as they come. A token can end inside a multi-byte UTF-8
    character; its bytes are held back until the character is complete, so the pieces join into
    exactly the text of decoding all the ids at once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bytes_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []
        self.sent = 0  # characters already given out, for tokenizers without decode_bytes

    def add(self, token_id: int) -> str:
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.bytes_decoder.decode(self.tokenizer.decode_bytes([token_id]))
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids).rstrip("\ufffd")  # an incomplete character decodes to U+FFFD
        piece, self.sent = text[self.sent :], max(self.sent, len(text))
        return piece

    def flush(self) -> str:
        if hasattr(self.tokenizer, "decode_bytes"):
            return self.bytes_decoder.decode(b"", final=True)
        text = self.tokenizer.decode(self.ids)
        return text[self.sent :]


def sampler_name(sampler: str | None, temperature: float | None, top_k: int | None, top_p: float | None) -> str:
    """The sampler to use when none is named: top-p if top_p is given, top-k if top_k or a
    temperature is, else greedy."""
    if sampler is not None:
        return sampler
    if top_p is not None:
        return "top-p"
    return "top-k" if top_k is not None or temperature is not None else "greedy"


def build_sampler(sampler: str | None = None, *, temperature: float | None = None, top_k: int | None = None, top_p: float | None = None):
    """A registered sampler built with the parameters given (a parameter it does not take is an error)."""
    params = {k: v for k, v in dict(temperature=temperature, top_k=top_k, top_p=top_p).items() if v is not None}
    return registry.sampler.build(Component(sampler_name(sampler, temperature, top_k, top_p), params), Context())


def make_generator(seed: int | None, device) -> torch.Generator | None:
    return torch.Generator(device=device).manual_seed(seed) if seed is not None else None


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    ids = tokenizer.encode(prompt)
    if not ids:
        raise GptkitError("empty prompt: give at least one character of text to continue")
    return ids


def text_generation(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 50,
    sampler: str | Callable | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    ignore_eos: bool = False,
    **options,
) -> Generation:
    """The one place a generation after text prompts is assembled (the API, the CLI, recipes and the
    training samples all come here): the sampler by name or callable (unnamed: greedy, or top-k /
    top-p when those are given), the prompts encoded, end-of-text unless `ignore_eos`, a generator
    seeded with `seed` on the model's device. `options` as `Generation` (use_cache, static_cache, pack_weights, compile)."""
    check_vocab(model.config, tokenizer, "generate")
    if not callable(sampler):
        sampler = build_sampler(sampler, temperature=temperature, top_k=top_k, top_p=top_p)
    device = next(model.parameters()).device
    return Generation(
        model,
        [encode_prompt(tokenizer, text) for text in prompts],
        max_new_tokens=max_new_tokens,
        sampler=sampler,
        eos_id=None if ignore_eos else tokenizer.eos_id,
        generator=make_generator(seed, device),
        **options,
    )


def generate(model, tokenizer, prompt: str | Sequence[str], *, stream: bool = False, **kwargs):
    """The completion of `prompt` (text after it), or a list of completions for a list of prompts
    (generated as one batch); kwargs as `text_generation`. With `stream=True` (one prompt), an
    iterator of text pieces as the tokens come."""
    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    if stream and len(texts) != 1:
        raise GptkitError("streaming takes one prompt")
    generation = text_generation(model, tokenizer, texts, **kwargs)
    if stream:
        return stream_text(generation, tokenizer)
    out = [tokenizer.decode(c.new_ids) for c in generation.run()]
    return out[0] if isinstance(prompt, str) else out


def stream_text(generation: Generation, tokenizer) -> Iterator[str]:
    """Text pieces of a one-prompt generation's completion as its tokens come."""
    decoder = TextDecoder(tokenizer)
    for (token,) in generation:
        if token is not None and (piece := decoder.add(token)):
            yield piece
    if tail := decoder.flush():
        yield tail
