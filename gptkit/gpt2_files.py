"""GPT-2's files as OpenAI and Hugging Face write them, shared by the `openai-tf` and `hf` loaders and
the `gpt2` tokenizer: the tensor name table, the hparams.json / config.json reader, and the byte
spelling of encoder.json + vocab.bpe (vocab.json + merges.txt)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from gptkit.errors import GptkitError
from gptkit.json_errors import malformed_json

ENDOFTEXT = "<|endoftext|>"


def read_gpt2_json(path: Path, size_keys: Iterable[str], missing: str = "missing") -> dict:
    """The JSON object of a GPT-2 folder's hparams.json or config.json, checked to give each of
    `size_keys` as a positive integer and an n_embd that n_head divides; else one error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptkitError(f"{path}: {missing}") from None
    except json.JSONDecodeError as exc:
        raise GptkitError(malformed_json(path, exc)) from None
    except (OSError, ValueError) as exc:
        raise GptkitError(f"{path}: not readable JSON ({exc})") from None
    size_keys = list(size_keys)
    if not isinstance(data, dict):
        raise GptkitError(f"{path}: expected a JSON object with {', '.join(size_keys)}")
    for key in size_keys:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GptkitError(f"{path}: {key} must be a positive integer, got {value!r}")
    if data["n_embd"] % data["n_head"]:
        raise GptkitError(f"{path}: n_embd = {data['n_embd']} is not divisible by n_head = {data['n_head']}")
    return data

# GPT-2's tensors, as (module, parameter, gptkit name, is a Conv1D weight stored [in, out]); OpenAI's
# TF checkpoints and Hugging Face's files name the same tree in their own spelling.
GPT2_EMBEDDINGS = [("wte", "weight", "tok_emb.weight", False), ("wpe", "weight", "pos_emb.weight", False)]
# A block's Conv1D layers (GPT-2's name, gptkit's nn.Linear): also what LoRA adapters name.
GPT2_BLOCK_LINEARS = (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"), ("mlp.c_fc", "ff.fc"), ("mlp.c_proj", "ff.proj"))
GPT2_BLOCK = [
    *[(norm, param, f"{ours}.{param}", False) for norm, ours in (("ln_1", "norm1"), ("ln_2", "norm2")) for param in ("weight", "bias")],
    *[(module, param, f"{ours}.{param}", param == "weight") for module, ours in GPT2_BLOCK_LINEARS for param in ("weight", "bias")],
]
GPT2_FINAL = [("ln_f", "weight", "final_norm.weight", False), ("ln_f", "bias", "final_norm.bias", False)]


def gpt2_name_map(n_layer: int, spell) -> list[tuple[str, str, bool]]:
    """(the format's name, gptkit name, is a Conv1D weight) for every GPT-2 tensor; `spell(block,
    module, parameter)` writes a name in the format's spelling (block None outside the blocks)."""
    names = [(spell(None, m, p), pt, conv) for m, p, pt, conv in GPT2_EMBEDDINGS]
    for i in range(n_layer):
        names += [(spell(i, m, p), f"blocks.{i}.{pt}", conv) for m, p, pt, conv in GPT2_BLOCK]
    return names + [(spell(None, m, p), pt, conv) for m, p, pt, conv in GPT2_FINAL]


def data_gym_byte_decoder() -> dict[str, int]:
    """GPT-2's files spell bytes as printable characters; this maps each character back to its byte."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    decoder = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in decoder.values():
            decoder[chr(256 + shifted)] = b
            shifted += 1
    return decoder


def read_vocab_files(encoder_json: Path, vocab_bpe: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary, merges) of OpenAI's encoder.json + vocab.bpe (or HF's vocab.json + merges.txt)."""
    with open(encoder_json, encoding="utf-8") as f:
        vocab = json.load(f)
    merges = [tuple(line.split()) for line in Path(vocab_bpe).read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return vocab, merges


def read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary, merges) of a Hugging Face tokenizer.json holding a byte-level BPE, GPT-2's kind
    (what transformers 5 saves for GPT-2, without vocab.json and merges.txt). Of its added tokens
    only end-of-text is kept; anything else is a ValueError saying what the file holds."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") != "BPE" or not any(step.get("type") == "ByteLevel" for step in steps):
        raise ValueError(f"not a byte-level BPE (GPT-2's kind): model type {model.get('type')!r}, pre_tokenizer {pre.get('type')!r}")
    vocab = dict(model["vocab"])
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", []) if t.get("content") == ENDOFTEXT})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    return vocab, merges


def bpe_ranks(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tuple[dict[bytes, int], int | None]:
    """(BPE ranks, end-of-text id or None) of a vocabulary in GPT-2's byte spelling and its merges,
    checked: merge i makes the token of rank 256 + i, as in GPT-2's files (a ValueError otherwise).

    Read directly rather than through tiktoken's loader, which caches local files by path and so
    would serve stale contents when a folder is rewritten.
    """
    byte_of = data_gym_byte_decoder()

    def to_bytes(token: str) -> bytes:
        return bytes(byte_of[c] for c in token)

    ranks = {to_bytes(k): v for k, v in vocab.items() if k not in (ENDOFTEXT, "<|startoftext|>")}
    for rank, (first, second) in enumerate(merges, start=256):
        if ranks.get(to_bytes(first) + to_bytes(second)) != rank:
            raise ValueError(f"merge {rank - 255} ({first} {second}) disagrees with the vocabulary")
    return ranks, vocab.get(ENDOFTEXT)

