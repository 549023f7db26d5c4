"""Tokenizers: `gpt2` (OpenAI's BPE through tiktoken) and `bytes` (no files needed).

The GPT-2 vocabulary is found, in order, at `path` (a folder holding encoder.json + vocab.bpe, as
OpenAI ships beside the weights, Hugging Face's vocab.json + merges.txt or tokenizer.json, or a
.tiktoken file), then through tiktoken's own cache/download.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterable

import attrs
import tiktoken

from gptkit import hookimpl
from gptkit.schema import path_field
from gptkit.errors import GptkitError
from gptkit.gpt2_files import ENDOFTEXT, bpe_ranks, read_tokenizer_json, read_vocab_files

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
        self.source: Path | None = None  # the vocabulary files it was read from, if any

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={ENDOFTEXT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def save(self, directory: Path) -> dict:
        """Write the vocabulary as `tokenizer.tiktoken` so the folder loads offline; return its spec."""
        ranks = sorted(self.encoding._mergeable_ranks.items(), key=lambda item: item[1])
        lines = b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks)
        (Path(directory) / "tokenizer.tiktoken").write_bytes(lines)
        return {"name": self.name, "path": "tokenizer.tiktoken"}


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

    def save(self, directory: Path) -> dict:
        return {"name": self.name}


def _encoding_from_ranks(ranks: dict[bytes, int], eos_id: int = GPT2_EOS_ID):
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: eos_id})


def ranks_from_tiktoken_file(path: Path) -> dict[bytes, int]:
    ranks = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def gpt2_from_files(path: str | Path) -> TiktokenTokenizer:
    """The GPT-2 tokenizer from a folder with encoder.json + vocab.bpe, vocab.json + merges.txt or
    tokenizer.json, or from a .tiktoken file. End-of-text keeps the id the files give it (GPT-2's
    50256; 256 in a byte-level vocabulary without merges, as `gptkit export` writes the bytes tokenizer)."""
    path = Path(path)
    eos_id = None
    try:
        if path.is_dir():
            for encoder, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
                if (path / encoder).is_file() and (path / merges).is_file():
                    ranks, eos_id = bpe_ranks(*read_vocab_files(path / encoder, path / merges))
                    break
            else:
                if not (path / "tokenizer.json").is_file():
                    raise GptkitError(f"{path}: no GPT-2 vocabulary here (expected encoder.json + vocab.bpe, vocab.json + merges.txt, or tokenizer.json)")
                ranks, eos_id = bpe_ranks(*read_tokenizer_json(path / "tokenizer.json"))
        elif path.is_file():
            ranks = ranks_from_tiktoken_file(path)
        else:
            raise GptkitError(f"{path}: no such file or folder (expected encoder.json + vocab.bpe, or a .tiktoken file)")
    except GptkitError:
        raise
    except Exception as exc:  # malformed JSON, bad base64, missing bytes...
        raise GptkitError(f"{path}: not a readable GPT-2 vocabulary: {type(exc).__name__}: {exc}") from None
    tokenizer = TiktokenTokenizer(_encoding_from_ranks(ranks, GPT2_EOS_ID if eos_id is None else eos_id))
    tokenizer.source = path
    return tokenizer


def gpt2_from_tiktoken() -> TiktokenTokenizer:
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
    path: str | None = path_field()  # folder with encoder.json + vocab.bpe (or vocab.json + merges.txt, or tokenizer.json), or a .tiktoken file


@hookimpl
def register_components(registry):
    registry.tokenizer.register(
        "gpt2",
        lambda ctx, path: gpt2_from_files(path) if path else gpt2_from_tiktoken(),
        params=GPT2Params,
        doc="OpenAI's GPT-2 BPE (50,257 ids) via tiktoken, from tiktoken's cache or encoder.json + vocab.bpe files.",
    )
    registry.tokenizer.register("bytes", lambda ctx: ByteTokenizer(), doc="UTF-8 bytes (256 ids) + end-of-text: needs no files.")
