"""Conformance checks: what gptkit expects of every attention, norm and feedforward, runnable on any
registered name, a third-party plugin's included. gptkit's own tests run them over every registered
component (tests/test_components.py); a plugin's tests call them on its names:

    from gptkit.testing import check_attention

    def test_conformance():
        check_attention("acme.window", window=3)

A failed check (or one the component crashes in) raises AssertionError naming the component and
the check. Nothing here needs pytest.

`write_tiny_pretrain(folder)` writes an experiment that trains a tiny GPT in seconds, for tests that
need a real run (gptkit's own, a plugin's with `model.attention.name=acme.window`, benchmarks);
they vary it with KEY=VALUE overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from gptkit.config import Component
from gptkit.generation import KVCache, StaticKVCache
from gptkit.model import GPTConfig
from gptkit.plugins import registry

CONFIG = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True)
"""The sizes the checks build components with: small, several heads, biases on."""

PREFILL = 5  # tokens the cached checks feed at once before going one token a step


def build(kind: str, name: str, config: GPTConfig = CONFIG, /, **params: Any) -> nn.Module:
    """The registered component `name` built as a GPT builds it, in eval mode, with every parameter
    drawn from N(0, 0.3): init values such as zero biases or unit gains would hide a parameter
    that is used wrongly. Seeded, so two builds are the same module."""
    torch.manual_seed(0)
    module = registry[kind].build(Component(name, params), config)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    return module.eval()


def shape_dtype_and_determinism(module: nn.Module, config: GPTConfig) -> None:
    """[B, T, C] in, the same shape and dtype out, twice the same; float64 works and agrees with float32."""
    x = torch.randn(3, 7, config.emb_dim)
    y = module(x)
    assert y.shape == x.shape, f"output shape {tuple(y.shape)} for input {tuple(x.shape)}"
    assert y.dtype == x.dtype, f"output dtype {y.dtype} for input {x.dtype}"
    assert torch.equal(y, module(x)), "two calls on the same input differ"
    y64 = module.double()(x.double())
    assert y64.dtype == torch.float64, f"output dtype {y64.dtype} for a float64 module and input"
    torch.testing.assert_close(y64.float(), y, atol=1e-4, rtol=1e-4)


def causality(module: nn.Module, config: GPTConfig) -> None:
    """Changing later positions never changes earlier outputs (to the bit), and does change theirs."""
    x = torch.randn(2, 10, config.emb_dim)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, config.emb_dim)
    y, y_changed = module(x), module(changed)
    torch.testing.assert_close(y[:, :6], y_changed[:, :6], atol=0, rtol=0, msg="a later position changed an earlier output")
    assert not torch.allclose(y[:, 6:], y_changed[:, 6:]), "changed inputs did not change their outputs"


def keyword_interface(module: nn.Module, config: GPTConfig) -> None:
    """forward(x, *, positions=None, kv_cache=None, padding_mask=None), and a bool class attribute
    `supports_kv_cache`; explicit positions 0..T-1 and an all-True padding_mask change nothing."""
    assert isinstance(getattr(type(module), "supports_kv_cache", None), bool), "no bool class attribute supports_kv_cache"
    x = torch.randn(2, 5, config.emb_dim)
    y = module(x, positions=torch.arange(5).expand(2, 5), kv_cache=None, padding_mask=torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(y, module(x), atol=1e-6, rtol=1e-5)


def kv_cache_matches_recompute(module: nn.Module, config: GPTConfig) -> None:
    """Through a KVCache (a prefill, then one token a step) the outputs are those of one full pass;
    likewise through a StaticKVCache where `supports_static_kv_cache` is set. Not checked when
    `supports_kv_cache` is False: generation then recomputes every step."""
    x = torch.randn(2, 9, config.emb_dim)
    for static in cache_kinds(module):
        y = through_cache(module, x, torch.arange(9).expand(2, 9), static=static)
        torch.testing.assert_close(y, module(x), atol=1e-5, rtol=1e-5, msg=lambda m: f"static={static}: {m}")


def cache_kinds(module: nn.Module) -> list[bool]:
    """Which caches (static or not) generation gives the module."""
    if not type(module).supports_kv_cache:
        return []
    return [False, True] if getattr(type(module), "supports_static_kv_cache", False) else [False]


def left_padding_is_hidden(module: nn.Module, config: GPTConfig) -> None:
    """A batch as generation pads it: row 0 has 3 padding tokens on the left (False in padding_mask,
    positions counting from its first real token), row 1 none. Each row's real tokens give what the
    row gives alone, without and (if supported) with the KV cache; nothing is NaN or inf."""
    x = torch.randn(2, 9, config.emb_dim)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    outputs = {"without a cache": module(x, positions=positions, padding_mask=mask)}
    for static in cache_kinds(module):
        outputs["with a static KV cache" if static else "with a KV cache"] = through_cache(module, x, positions, mask, static=static)
    for how, y in outputs.items():
        assert torch.isfinite(y).all(), f"non-finite output {how}"
        torch.testing.assert_close(y[:1, 3:], module(x[:1, 3:]), atol=1e-5, rtol=1e-5, msg=lambda m: f"padded row {how}: {m}")
        torch.testing.assert_close(y[1:], module(x[1:]), atol=1e-5, rtol=1e-5, msg=lambda m: f"unpadded row {how}: {m}")


def through_cache(module: nn.Module, x: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None = None, static: bool = False):
    """The outputs for x [B, T, C] as generation computes them: the first PREFILL tokens at once, then
    one at a time, each call given its tokens' positions, the padding_mask of every token so far and
    the KVCache holding the earlier tokens' keys and values. With `static`, a StaticKVCache: each
    one-token step writes at its slot and gets a padding_mask over all T slots, False on those not
    written yet."""
    total = x.shape[1]
    slot = torch.zeros(1, dtype=torch.long)
    cache = StaticKVCache(total, slot) if static else KVCache(max_length=total)
    real = padding_mask if padding_mask is not None else torch.ones(x.shape[:2], dtype=torch.bool)
    pieces = []
    for start, end in [(0, PREFILL), *((t, t + 1) for t in range(PREFILL, total))]:
        if static and start >= PREFILL:
            slot.fill_(start)
            mask = real & (torch.arange(total) < end)
        else:
            mask = padding_mask[:, :end] if padding_mask is not None else None
        pieces.append(module(x[:, start:end], positions=positions[:, start:end], kv_cache=cache, padding_mask=mask))
    return torch.cat(pieces, dim=1)


Check = Callable[[nn.Module, GPTConfig], None]
COMPONENT_CHECKS: tuple[Check, ...] = (shape_dtype_and_determinism, causality)
ATTENTION_CHECKS: tuple[Check, ...] = (*COMPONENT_CHECKS, keyword_interface, kv_cache_matches_recompute, left_padding_is_hidden)


def check_attention(name: str, /, *, config: GPTConfig = CONFIG, **params: Any) -> None:
    """Run every attention check on the registered attention `name` built with `params`."""
    _run_checks("attention", name, config, params, ATTENTION_CHECKS)


def check_norm(name: str, /, *, config: GPTConfig = CONFIG, **params: Any) -> None:
    """Run the checks every model component passes on the registered norm `name` built with `params`."""
    _run_checks("norm", name, config, params, COMPONENT_CHECKS)


def check_feedforward(name: str, /, *, config: GPTConfig = CONFIG, **params: Any) -> None:
    """Run the checks every model component passes on the registered feedforward `name` built with `params`."""
    _run_checks("feedforward", name, config, params, COMPONENT_CHECKS)


def _run_checks(kind: str, name: str, config: GPTConfig, params: dict[str, Any], checks: tuple[Check, ...]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and on a busy machine waiting for one is 100x slower
    try:
        for check in checks:
            module = build(kind, name, config, **params)  # a fresh module each: a check may change it (float64)
            try:
                check(module, config)
            except Exception as exc:  # a crash fails the check too, and says which
                what = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
                raise AssertionError(f"{kind} {name!r} fails {check.__name__}: {what}") from exc
    finally:
        torch.set_num_threads(threads)


# --- a tiny pretraining run -----------------------------------------------------------------------

TINY_PRETRAIN = """\
[run]
name = "tiny"
recipe = "pretrain"
seed = 7
device = "cpu"
[model]
vocab_size = 257
context_length = 32
emb_dim = 16
n_heads = 2
n_layers = 2
drop_rate = 0.1
[data]
tokenizer = { name = "bytes" }
dataset = { name = "text", path = "text.txt" }
split = [0.9, 0.1]
[train]
epochs = 3
batch_size = 4
lr = 3e-3
eval_every = 3
eval_batches = 2
save_best = false
precision = "fp32"
[generate]
max_new_tokens = 8
"""


def tiny_text(lines: int = 24) -> str:
    return "".join(f"Line {i}: every effort moves you, said Jack Gisburn, {i * 7 % 13} times.\n" for i in range(lines))


def write_tiny_pretrain(folder: str | Path, lines: int = 24) -> Path:
    """folder/tiny.toml, the pretrain recipe on a 2-layer GPT of width 16 over bytes, and its text,
    folder/text.txt (`lines` short lines: 24 give 10 steps of batch 4 per epoch). Returns the experiment's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.txt").write_text(tiny_text(lines), encoding="utf-8")
    (folder / "tiny.toml").write_text(TINY_PRETRAIN, encoding="utf-8")
    return folder / "tiny.toml"
