"""The generation engine: KV cache == recomputation, batch == alone, stops, cuts, seeds, streaming."""

from __future__ import annotations

import logging

import pytest
import torch

import gptkit
from gptkit.errors import GptkitError
from gptkit.generation import (
    DecodingRows,
    Generation,
    KVCache,
    StaticKVCache,
    TextDecoder,
    generate_ids,
    supports_kv_cache,
    supports_static_kv_cache,
)
from gptkit.plugins import registry
from gptkit_plugins.attention import CausalSelfAttention, sdpa_kernel
from gptkit_plugins.sampling import greedy
from tinymodel import byte_tokenizer, one_thread, tiny_gpt  # noqa: F401 (one_thread: autouse fixture)

PROMPTS = [[72, 101, 108, 108, 111], [7], [200, 3, 9, 120, 44, 1, 2, 3, 4, 5, 6], [33, 34]]


def cached_attentions() -> list[str]:
    names = [n for n in registry.attention.names() if supports_kv_cache(tiny_gpt(n))]
    assert "causal" in names and "causal-reference" in names
    return names


@pytest.fixture
def uncached_attention():
    """An attention plugin that declines the KV cache (as a third-party one may)."""

    class NoCache(CausalSelfAttention):
        supports_kv_cache = False

        def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
            assert kv_cache is None
            return super().forward(x, positions=positions, padding_mask=padding_mask)

    registry.attention.register("test.nocache", lambda config: NoCache(config, sdpa_kernel), doc="test")
    yield "test.nocache"
    registry.attention.unregister("test.nocache")


@pytest.mark.parametrize("attention", cached_attentions())
def test_cached_greedy_equals_uncached(attention):
    model = tiny_gpt(attention)
    prompt = PROMPTS[0]
    cached = generate_ids(model, [prompt], max_new_tokens=80, sampler=greedy, use_cache=True)[0]
    uncached = generate_ids(model, [prompt], max_new_tokens=80, sampler=greedy, use_cache=False)[0]
    assert len(cached.new_ids) == 80
    assert cached.new_ids == uncached.new_ids
    assert len(set(cached.new_ids)) > 5  # not a degenerate repetition that would hide mistakes


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("attention", cached_attentions())
def test_batch_of_different_lengths_equals_each_alone(attention, use_cache):
    model = tiny_gpt(attention)
    batch = generate_ids(model, PROMPTS, max_new_tokens=64, sampler=greedy, use_cache=use_cache)
    for prompt, together in zip(PROMPTS, batch):
        alone = generate_ids(model, [prompt], max_new_tokens=64, sampler=greedy, use_cache=True)[0]
        assert together.new_ids == alone.new_ids


def test_attention_without_cache_support_still_generates(uncached_attention):
    model = tiny_gpt(uncached_attention)
    reference = tiny_gpt("causal")
    reference.load_state_dict(model.state_dict())
    assert not supports_kv_cache(model)
    ours = generate_ids(model, PROMPTS, max_new_tokens=20, sampler=greedy)
    theirs = generate_ids(reference, PROMPTS, max_new_tokens=20, sampler=greedy)
    assert [c.new_ids for c in ours] == [c.new_ids for c in theirs]


def test_left_padded_positions_and_logits_match_unpadded():
    """The model itself, given padding_mask and positions, gives a padded row the logits of the row alone."""
    model = tiny_gpt()
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[False, False, True, True, True]])
    positions = torch.tensor([[0, 0, 0, 1, 2]])
    alone = model(short)
    together = model(padded, positions=positions, padding_mask=mask)
    torch.testing.assert_close(together[:, 2:], alone)


def test_kv_cache_rejects_overflow():
    cache = KVCache(3)
    k = torch.zeros(1, 2, 2, 4)
    cache.update(k, k)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(k, k)


class Scripted:
    """A sampler that plays back a fixed token per step and row."""

    def __init__(self, rows: list[list[int]]):
        self.steps = list(zip(*rows))

    def __call__(self, logits, generator=None):
        return torch.tensor(self.steps.pop(0))


def test_each_row_stops_at_end_of_text():
    model = tiny_gpt()
    sampler = Scripted([[1, 2, 256, 3, 4], [5, 6, 7, 8, 9]])
    seen = []
    generation = Generation(model, PROMPTS[:2], max_new_tokens=5, sampler=sampler, eos_id=256)
    for tokens in generation:
        seen.append(tokens)
    first, second = generation.completions
    assert (first.new_ids, first.stop_reason) == ([1, 2], "eos")
    assert (second.new_ids, second.stop_reason) == ([5, 6, 7, 8, 9], "max_new_tokens")
    assert seen[2] == [None, 7] and seen[4] == [None, 9]


def test_generation_ends_when_every_row_has_stopped():
    sampler = Scripted([[256, 1, 1], [1, 256, 1]])
    completions = generate_ids(tiny_gpt(), PROMPTS[:2], max_new_tokens=3, sampler=sampler, eos_id=256)
    assert [c.new_ids for c in completions] == [[], [1]]
    assert sampler.steps == [(1, 1)]  # the third step never ran


def test_long_prompt_is_cut_from_the_left_with_a_warning(caplog):
    model = tiny_gpt(context_length=32)
    prompt = list(range(1, 41))
    with caplog.at_level(logging.WARNING, logger="gptkit.generation"):
        (c,) = generate_ids(model, [prompt], max_new_tokens=8, sampler=greedy)
    assert c.prompt_ids == prompt[-24:]
    assert len(c.new_ids) == 8
    assert "longer than the context" in caplog.text


def test_too_many_new_tokens_stop_when_the_context_is_full(caplog):
    model = tiny_gpt(context_length=32)
    with caplog.at_level(logging.WARNING, logger="gptkit.generation"):
        (c,) = generate_ids(model, [[1] * 20], max_new_tokens=50, sampler=greedy)
    assert (len(c.new_ids), c.stop_reason) == (12, "context")
    assert "context of 32 tokens is full" in caplog.text


def test_same_seed_same_text():
    model, tokenizer = tiny_gpt(), byte_tokenizer()
    kwargs = dict(max_new_tokens=30, top_p=0.95, temperature=1.5, ignore_eos=True)
    first = gptkit.generate(model, tokenizer, "Hello", seed=7, **kwargs)
    assert gptkit.generate(model, tokenizer, "Hello", seed=7, **kwargs) == first
    assert gptkit.generate(model, tokenizer, "Hello", seed=8, **kwargs) != first


def test_api_batch_and_stream():
    model, tokenizer = tiny_gpt(), byte_tokenizer()
    texts = gptkit.generate(model, tokenizer, ["Hello", "a longer prompt"], max_new_tokens=20, ignore_eos=True)
    assert texts[0] == gptkit.generate(model, tokenizer, "Hello", max_new_tokens=20, ignore_eos=True)
    pieces = list(gptkit.generate(model, tokenizer, "Hello", max_new_tokens=20, stream=True, top_k=50, seed=3, ignore_eos=True))
    assert "".join(pieces) == gptkit.generate(model, tokenizer, "Hello", max_new_tokens=20, top_k=50, seed=3, ignore_eos=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampler="nope"), "nope"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p must be in"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(temperature=-1.0), "temperature"),
        (dict(sampler="greedy", top_k=3), "takes no parameters"),
    ],
)
def test_bad_sampler_settings_are_clear_errors(kwargs, message):
    with pytest.raises(GptkitError, match=message):
        gptkit.generate(tiny_gpt(), byte_tokenizer(), "Hello", **kwargs)


def test_empty_prompt_is_an_error():
    with pytest.raises(GptkitError, match="empty prompt"):
        gptkit.generate(tiny_gpt(), byte_tokenizer(), "")


class NoBytes:
    """A tokenizer offering only decode(), to exercise the decoder's fallback."""

    def __init__(self, tokenizer):
        self.inner = tokenizer

    def decode(self, ids):
        return self.inner.decode(ids)


@pytest.mark.parametrize("wrap", [lambda t: t, NoBytes])
def test_text_decoder_joins_pieces_across_multibyte_characters(wrap):
    tokenizer = wrap(byte_tokenizer())
    text = "héllo, 日本語 🙂!"
    decoder = TextDecoder(tokenizer)
    pieces = [decoder.add(b) for b in text.encode("utf-8")] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[1] == "" and pieces[2] == "é"  # the first byte of é waits for the second


def test_text_decoder_with_gpt2_tokens_split_inside_characters(gpt2_vocab):
    from gptkit_plugins.tokenizers import gpt2_from_files

    tokenizer = gpt2_from_files(gpt2_vocab)
    text = "naïve café — 日本語の文章 🙂🙃 done"
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # some token ends inside a character
    decoder = TextDecoder(tokenizer)
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_packed_weights_follow_weight_changes():
    """Packed copies of the weights (CPU fast path) are remade when a weight changes in place."""
    model = tiny_gpt()
    before = generate_ids(model, [PROMPTS[0]], max_new_tokens=10, sampler=greedy)[0].new_ids
    plain = generate_ids(model, [PROMPTS[0]], max_new_tokens=10, sampler=greedy, pack_weights=False)[0].new_ids
    assert before == plain
    with torch.no_grad():
        for block in model.blocks:
            block.ff.fc.weight.mul_(-1.0)
    after = generate_ids(model, [PROMPTS[0]], max_new_tokens=10, sampler=greedy)[0].new_ids
    assert after == generate_ids(model, [PROMPTS[0]], max_new_tokens=10, sampler=greedy, pack_weights=False)[0].new_ids
    assert after != before
    assert all("forward" not in vars(m) for m in model.modules())  # layers restored


@pytest.mark.parametrize("attention", ["causal", "causal-reference"])
def test_static_cache_gives_the_tokens_of_the_dynamic_cache(attention):
    """The fixed-shape steps (what a CUDA graph captures) decode as the growing cache does, also for
    a left-padded batch and a one-token prompt."""
    model = tiny_gpt(attention)
    assert supports_static_kv_cache(model)
    for prompts in ([PROMPTS[0]], PROMPTS, [[5]]):
        static = generate_ids(model, prompts, max_new_tokens=60, sampler=greedy, static_cache=True)
        dynamic = generate_ids(model, prompts, max_new_tokens=60, sampler=greedy, static_cache=False)
        assert [c.new_ids for c in static] == [c.new_ids for c in dynamic]
        assert all(len(set(c.new_ids)) > 5 for c in static)


def test_static_cache_steps_write_one_slot_and_see_the_buffers():
    slot = torch.tensor([3])
    cache = StaticKVCache(6, slot)
    prefill = torch.randn(2, 4, 3, 8)
    keys, _ = cache.update(prefill, prefill)
    assert keys.shape[2] == 3 and cache.length == 3
    step = torch.randn(2, 4, 1, 8)
    keys, values = cache.update(step, -step)
    assert keys.shape[2] == 6  # the whole buffer: fixed shapes every step
    torch.testing.assert_close(keys[:, :, 3:4], step)
    torch.testing.assert_close(values[:, :, :3], prefill)
    assert not keys[:, :, 4:].any()  # not written yet: zeros, never stale memory


def test_attention_without_static_cache_support_keeps_the_growing_cache():
    """A third-party attention that sizes its mask from the keys it gets (as examples/acme-window-
    attention does) is not given the static cache."""

    class GrowingOnly(CausalSelfAttention):
        def forward(self, x, *, positions=None, kv_cache=None, padding_mask=None):
            assert not isinstance(kv_cache, StaticKVCache)
            return super().forward(x, positions=positions, kv_cache=kv_cache, padding_mask=padding_mask)

    GrowingOnly.supports_static_kv_cache = False
    registry.attention.register("test.growing", lambda config: GrowingOnly(config, sdpa_kernel), doc="test")
    try:
        model = tiny_gpt("test.growing")
        assert not supports_static_kv_cache(model)
        reference = tiny_gpt("causal")
        ours = generate_ids(model, PROMPTS, max_new_tokens=20, sampler=greedy)
        assert [c.new_ids for c in ours] == [c.new_ids for c in generate_ids(reference, PROMPTS, max_new_tokens=20, sampler=greedy)]
    finally:
        registry.attention.unregister("test.growing")


# Rows of a continuous batch: (step, event) -> names of the rows that join before it / leave after it.
JOINING = {0: ["a"], 3: ["b", "c"], 9: ["d"], 30: ["e", "f"]}
LEAVING = {7: ["a"], 12: ["c"], 29: ["b", "d"], 40: ["f"]}
ROW_PROMPTS = dict(a=PROMPTS[0], b=PROMPTS[2], c=PROMPTS[1], d=PROMPTS[3], e=[9] * 30, f=[4, 4])


@pytest.mark.parametrize("attention", cached_attentions())
def test_rows_joining_and_leaving_get_the_tokens_they_get_alone(attention):
    """Rows join (longer and shorter than the rows decoding), leave, the batch empties and fills again,
    and the buffers grow: each row's greedy tokens are those of the row generated alone."""
    model = tiny_gpt(attention)
    rows, active, logits = DecodingRows(model), [], None
    tokens_of = {name: [] for name in ROW_PROMPTS}
    with torch.no_grad():
        for step in range(50):
            if step in JOINING:
                new = rows.add([ROW_PROMPTS[name] for name in JOINING[step]])
                logits = new if logits is None else torch.cat([logits, new])
                active += JOINING[step]
            tokens = greedy(logits)
            for name, token in zip(active, tokens.tolist()):
                tokens_of[name].append(token)
            kept = [i for i, name in enumerate(active) if name not in LEAVING.get(step, [])]
            rows.keep(kept)
            active, tokens = [active[i] for i in kept], tokens[kept]
            assert rows.lengths == [len(ROW_PROMPTS[n]) + len(tokens_of[n]) - 1 for n in active]
            assert rows.width == max(rows.lengths, default=0)  # no column that every row pads
            logits = rows.step(tokens) if active else None
    assert [len(tokens_of[n]) for n in "abcdef"] == [8, 27, 10, 21, 20, 11]
    for name, prompt in ROW_PROMPTS.items():
        (alone,) = generate_ids(model, [prompt], max_new_tokens=len(tokens_of[name]), sampler=greedy)
        assert tokens_of[name] == alone.new_ids, name


def test_rows_refuse_to_pass_the_context():
    model = tiny_gpt(context_length=8)
    rows = DecodingRows(model)
    with pytest.raises(ValueError, match="does not fit the context"):
        rows.add([[1] * 9])
    with torch.no_grad():
        rows.add([[1] * 7])
        rows.step(torch.tensor([2]))
        with pytest.raises(ValueError, match="context of 8 is full"):
            rows.step(torch.tensor([3]))
