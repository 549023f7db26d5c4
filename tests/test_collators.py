"""Collators: `masked-response` tensor for tensor as the original ch07 custom_collate_fn (quirk
included), its own padding and prompt masking written out, and `lm`."""

import random

import pytest
import torch

from gptkit.config import Component
from gptkit.interfaces import IGNORE_INDEX, Batch, Context, Example
from gptkit.plugins import registry
from gptkit_plugins.tokenizers import GPT2_EOS_ID, ByteTokenizer

EOS = GPT2_EOS_ID


class Gpt2Ids:
    """Only what collators read from a tokenizer: GPT-2's end-of-text id."""

    eos_id = EOS


def collator(name="masked-response", tokenizer=Gpt2Ids(), **params):
    return registry.collator.build(Component(name, params), Context(tokenizer=tokenizer))


def examples(*seqs, prompt_lengths=None):
    return [Example(list(s), p) for s, p in zip(seqs, prompt_lengths or [0] * len(seqs))]


def test_masked_response_is_the_originals_collate_on_random_batches(ch07):
    rng = random.Random(0)
    for trial in range(300):
        batch = [[rng.choice([EOS, 0, 1, 2, 3, 500, 50255]) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 5))]
        allowed = rng.choice([None, None, 2, 5, 9, 20])
        ignore_index = rng.choice([IGNORE_INDEX, -1])
        ours = collator(allowed_max_length=allowed, ignore_index=ignore_index)(examples(*batch))
        inputs, targets = ch07.custom_collate_fn(batch, pad_token_id=EOS, ignore_index=ignore_index, allowed_max_length=allowed)
        assert isinstance(ours, Batch) and ours.ignore_index == ignore_index
        assert ours.inputs.dtype == ours.targets.dtype == torch.long
        assert torch.equal(ours.inputs, inputs) and torch.equal(ours.targets, targets), (trial, batch, allowed)


def test_end_of_text_kept_padding_ignored_and_the_originals_quirk():
    batch = collator()(examples([1, 2, 3], [4]))
    assert batch.inputs.tolist() == [[1, 2, 3], [4, EOS, EOS]]
    assert batch.targets.tolist() == [[2, 3, EOS], [EOS, -100, -100]]
    # an end-of-text inside the text is the first target equal to the pad id: the appended one is ignored
    batch = collator()(examples([5, EOS, 7], [1, 2, 3, 4]))
    assert batch.targets.tolist() == [[EOS, 7, -100, -100], [2, 3, 4, EOS]]


def test_a_pad_id_other_than_end_of_text_pads_by_position():
    batch = collator(pad_id=0)(examples([1, 0, 3], [4], [EOS, 6]))
    assert batch.inputs.tolist() == [[1, 0, 3], [4, EOS, 0], [EOS, 6, EOS]]
    assert batch.targets.tolist() == [[0, 3, EOS], [EOS, -100, -100], [6, EOS, -100]]


def test_mask_prompt_hides_the_targets_that_predict_the_prompt():
    batch = collator(mask_prompt=True)(examples([10, 11, 12, 13, 14], [20, 21, 22], [30, 31], prompt_lengths=[3, 1, 2]))
    assert batch.inputs.tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, EOS, EOS], [30, 31, EOS, EOS, EOS]]
    assert batch.targets.tolist() == [
        [-100, -100, 13, 14, EOS],  # 11 and 12 are prompt: only the response 13 14 and the stop are learnt
        [21, 22, EOS, -100, -100],  # a 1-token prompt predicts nothing of itself
        [-100, EOS, -100, -100, -100],  # an empty response: only the stop
    ]
    # truncation first, then the prompt mask
    cut = collator(mask_prompt=True, allowed_max_length=2)(examples([10, 11, 12, 13, 14], prompt_lengths=[4]))
    assert cut.inputs.tolist() == [[10, 11]] and cut.targets.tolist() == [[-100, -100]]
    off = collator(mask_prompt=False)(examples([10, 11, 12], prompt_lengths=[3]))
    assert off.targets.tolist() == [[11, 12, EOS]]


def test_pad_id_defaults_to_the_tokenizers_end_of_text():
    batch = collator(tokenizer=ByteTokenizer())(examples([104, 105], [33]))
    assert batch.inputs.tolist() == [[104, 105], [33, 256]] and batch.targets.tolist() == [[105, 256], [256, -100]]
    with pytest.raises(ValueError, match="collator needs a tokenizer"):
        collator(tokenizer=None, pad_id=0)
    with pytest.raises(ValueError, match="collator needs pad_id or a tokenizer"):
        collator("lm", tokenizer=None)


def test_lm_targets_every_next_token_and_ignores_padding():
    batch = collator("lm", pad_id=0)(examples([1, 2, 3, 4], [5, 6], [7]))
    assert batch.inputs.tolist() == [[1, 2, 3], [5, 0, 0], [0, 0, 0]]
    assert batch.targets.tolist() == [[2, 3, 4], [6, -100, -100], [-100, -100, -100]]
    cut = collator("lm", pad_id=0, allowed_max_length=3)(examples([1, 2, 3, 4], [5, 6]))
    assert cut.inputs.tolist() == [[1, 2], [5, 0]] and cut.targets.tolist() == [[2, 3], [6, -100]]
