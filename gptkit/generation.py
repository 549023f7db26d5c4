"""Text generation: a prompt's tokens in, new tokens out, one sampler call per step.

The model runs over the prompt once (prefill), then over one new token at a time (decode), reading
earlier keys and values from a `KVCache` per block. Attention plugins that do not support the cache
(`supports_kv_cache = False`) get the whole window recomputed every step instead.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of one attention layer, preallocated for `max_length` positions.

    `update(k, v)` appends k, v [B, H, T, D] and returns all keys and values so far.
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


def supports_kv_cache(model) -> bool:
    return all(getattr(block.attn, "supports_kv_cache", False) for block in model.blocks)


@torch.no_grad()
def generate_ids(
    model,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    sampler,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool | None = None,
) -> list[int]:
    """The new token ids after `prompt_ids` (at most `max_new_tokens`, stopping after `eos_id`).

    The prompt keeps its last `context_length` tokens; generation stops when the context is full.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    context = model.config.context_length
    ids = torch.tensor([prompt_ids[-context:]], dtype=torch.long, device=device)
    use_cache = supports_kv_cache(model) if use_cache is None else use_cache
    max_new_tokens = min(max_new_tokens, context - ids.shape[1]) if use_cache else max_new_tokens
    caches = [KVCache(context) for _ in model.blocks] if use_cache else None
    new: list[int] = []
    step_input = ids
    try:
        for _ in range(max_new_tokens):
            if use_cache:
                logits = model(step_input, kv_caches=caches)
            else:
                logits = model(ids[:, -context:])
            next_id = sampler(logits[:, -1, :].float(), generator)
            token = int(next_id[0])
            new.append(token)
            if eos_id is not None and token == eos_id:
                break
            step_input = next_id.view(1, 1).to(device)
            ids = torch.cat([ids, step_input], dim=1)
    finally:
        model.train(was_training)
    return new
