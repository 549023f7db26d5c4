"""GPT-2's four published sizes by name (and their aliases), used by `[model] preset` and the loaders."""

from __future__ import annotations

PRESETS: dict[str, dict[str, int]] = {
    "gpt2-124M": dict(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12),
    "gpt2-355M": dict(vocab_size=50257, context_length=1024, emb_dim=1024, n_heads=16, n_layers=24),
    "gpt2-774M": dict(vocab_size=50257, context_length=1024, emb_dim=1280, n_heads=20, n_layers=36),
    "gpt2-1558M": dict(vocab_size=50257, context_length=1024, emb_dim=1600, n_heads=25, n_layers=48),
}
ALIASES = {"gpt2": "gpt2-124M", "gpt2-medium": "gpt2-355M", "gpt2-large": "gpt2-774M", "gpt2-xl": "gpt2-1558M"}
SIZE_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")


def resolve_preset(name: str) -> str | None:
    """The canonical preset name for a preset or alias, or None."""
    name = ALIASES.get(name, name)
    return name if name in PRESETS else None
