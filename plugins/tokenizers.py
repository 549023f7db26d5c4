"""Tokenizers: `gpt2` (OpenAI's BPE through tiktoken) and `bytes` (no files needed).

The GPT-2 vocabulary is found, in order, at `path` (a folder holding encoder.json + vocab.bpe, as
OpenAI ships beside the weights, or a .tiktoken file), then through tiktoken's own cache/download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import attrs

from gptkit import hookimpl
from gptkit.errors import GptkitError

ENDOFTEXT = "<|endoftext|>"
GPT2_EOS_ID = 50256
# GPT-2's pre-tokenisation pattern (tiktoken's r50k_base / gpt2).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TiktokenTokenizer:
    """A tiktoken Encoding behind gptkit's tokenizer interface; end-of-text is allowed in input text."""

    def __init__(self, encoding, name: str = "gpt2"):
        self.encoding = encoding
        self.name = name
        self.eos_id = encoding.eot_token
        self.vocab_size = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, end-of-text 256: works anywhere, no vocabulary files."""

    name = "bytes"
    eos_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(ENDOFTEXT)):
            if i:
                ids.append(self.eos_id)
            ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(i for i in ids if i < 256)


def _encoding_from_ranks(ranks: dict[bytes, int]):
    import tiktoken

    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: GPT2_EOS_ID})


def gpt2_from_files(path: str | Path) -> TiktokenTokenizer:
    """The GPT-2 tokenizer from a folder with encoder.json + vocab.bpe, or from a .tiktoken file."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe

    path = Path(path)
    try:
        if path.is_dir():
            missing = [f for f in ("encoder.json", "vocab.bpe") if not (path / f).is_file()]
            if missing:
                raise GptkitError(f"{path}: no GPT-2 vocabulary here (missing {', '.join(missing)})")
            ranks = data_gym_to_mergeable_bpe_ranks(str(path / "vocab.bpe"), str(path / "encoder.json"))
        elif path.is_file():
            ranks = load_tiktoken_bpe(str(path))
        else:
            raise GptkitError(f"{path}: no such file or folder (expected encoder.json + vocab.bpe, or a .tiktoken file)")
    except GptkitError:
        raise
    except Exception as exc:  # tiktoken raises assorted errors on malformed files
        raise GptkitError(f"{path}: not a readable GPT-2 vocabulary: {type(exc).__name__}: {exc}") from None
    return TiktokenTokenizer(_encoding_from_ranks(ranks))


def gpt2_from_tiktoken() -> TiktokenTokenizer:
    import tiktoken

    try:
        return TiktokenTokenizer(tiktoken.get_encoding("gpt2"))
    except Exception as exc:
        raise GptkitError(
            "the GPT-2 vocabulary is not available: tiktoken could not load it "
            f"({type(exc).__name__}). Offline, set data.tokenizer.path to a folder with encoder.json and "
            "vocab.bpe (OpenAI ships them with the weights) or to a .tiktoken file, or seed tiktoken's cache "
            "(TIKTOKEN_CACHE_DIR)."
        ) from None


@attrs.define
class GPT2Params:
    path: str | None = None  # folder with encoder.json + vocab.bpe, or a .tiktoken file


@hookimpl
def register_components(registry):
    registry.tokenizer.register(
        "gpt2",
        lambda ctx, path: gpt2_from_files(path) if path else gpt2_from_tiktoken(),
        params=GPT2Params,
        doc="OpenAI's GPT-2 BPE (50,257 ids) via tiktoken, from tiktoken's cache or encoder.json + vocab.bpe files.",
    )
    registry.tokenizer.register("bytes", lambda ctx: ByteTokenizer(), doc="UTF-8 bytes (256 ids) + end-of-text: needs no files.")
