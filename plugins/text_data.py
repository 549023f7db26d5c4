"""Dataset `text`: sliding windows over plain text from a file, a folder of .txt files, or a URL.

The text is tokenized once into a token file in the cache, keyed by the text's content and the
tokenizer, and read back memory-mapped: later runs skip tokenization and a corpus larger than RAM
never has to fit in memory. Documents (the files of a folder) are joined with the end-of-text id.
A window is `max_length + 1` tokens (inputs and their next-token targets), one every `stride` tokens,
as in the original scripts; the train/val(/test) split cuts the token stream by ratio, so
overlapping windows never straddle two splits.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import attrs
import numpy as np
from tqdm import tqdm

from gptkit import hookimpl
from gptkit.errors import GptkitError
from gptkit.data import checked_max_length
from gptkit.interfaces import Example
from gptkit.schema import path_field
from gptkit.files import decode_utf8
from gptkit.download import cache_dir as default_cache_dir
from gptkit.download import download_once, is_url

BLOCK_BYTES = 16 << 20  # tokenize big files in blocks cut at a newline


def text_files(path: str, cache: Path) -> list[Path]:
    """The files a `path` names: one file, every .txt under a folder (sorted), or a downloaded URL."""
    if is_url(path):
        return [download_once(path, cache)]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise GptkitError(f"{p}: folder holds no .txt files")
        return files
    if not p.exists():
        raise GptkitError(f"{p}: no such file or folder")
    return [p]


def digest(path: Path) -> bytes:
    """SHA-256 of a file's content, read in blocks (the file may be larger than RAM)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(BLOCK_BYTES):
                h.update(chunk)
    except OSError as exc:
        raise GptkitError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return h.digest()


def blocks(path: Path) -> Iterator[bytes]:
    """A file in blocks of about BLOCK_BYTES, each cut after a newline so that no character is split."""
    with open(path, "rb") as f:
        carry = b""
        while chunk := f.read(BLOCK_BYTES):
            data = carry + chunk
            cut = data.rfind(b"\n") + 1 or len(data)
            yield data[:cut]
            carry = data[cut:]
        if carry:
            yield carry


def token_file(files: list[Path], tokenizer, cache: Path) -> np.ndarray:
    """The files' tokens (joined with end-of-text), memory-mapped from a cache file made once."""
    key = hashlib.sha256(json.dumps([tokenizer.name, tokenizer.vocab_size, tokenizer.eos_id]).encode())
    for f in files:
        key.update(digest(f))
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    target = cache / "tokens" / f"{key.hexdigest()[:32]}.{np.dtype(dtype).name}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for i, f in enumerate(tqdm(files, desc="tokenizing", unit="file", leave=False, disable=len(files) < 2)):
                    if i:
                        out.write(np.array([tokenizer.eos_id], dtype=dtype).tobytes())
                    offset, line = 0, 1
                    for data in blocks(f):
                        out.write(np.asarray(tokenizer.encode(decode_utf8(data, f, offset, line)), dtype=dtype).tobytes())
                        offset, line = offset + len(data), line + data.count(b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    if target.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(target, dtype=dtype, mode="r")


class TokenWindows(Sequence[Example]):
    """Windows of `max_length + 1` tokens every `stride` tokens over tokens[start:end]."""

    def __init__(self, tokens: np.ndarray, max_length: int, stride: int, source: str, start: int = 0, end: int | None = None):
        self.tokens, self.max_length, self.stride, self.source = tokens, max_length, stride, source
        self.start, self.end = start, len(tokens) if end is None else end

    def __len__(self) -> int:
        return max(0, -(-(self.end - self.start - self.max_length) // self.stride))

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < len(self):
            raise IndexError(i)
        begin = self.start + i * self.stride
        return Example(self.tokens[begin : begin + self.max_length + 1].astype(np.int64).tolist())

    def split(self, shares: dict[str, float], order: Sequence[str]) -> dict[str, "TokenWindows"]:
        """Contiguous parts of the token stream by share, cut in `order`; each non-empty part must hold a window."""
        n, parts, begin, total = self.end - self.start, {}, self.start, 0.0
        for i, name in enumerate(order):
            fraction = shares[name]
            total += fraction
            end = self.start + int(round(total * n)) if i < len(order) - 1 else self.end
            part = TokenWindows(self.tokens, self.max_length, self.stride, self.source, begin, end)
            if fraction > 0 and len(part) == 0:
                raise GptkitError(
                    f"{self.source}: the {name} split ({fraction:.0%}) has {end - begin} tokens, too short for one window "
                    f"of max_length + 1 = {self.max_length + 1} tokens; use more text, a smaller data.dataset.max_length, "
                    "or change data.split"
                )
            parts[name] = part
            begin = end
        return parts


@attrs.define
class TextParams:
    path: str = path_field(attrs.NOTHING)  # a .txt file, a folder of .txt files, or an http(s) URL
    max_length: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))  # None: the context length
    stride: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))  # None: max_length
    cache_dir: str | None = path_field()  # None: $GPTKIT_CACHE or ~/.cache/gptkit


def text_dataset(ctx, path: str, max_length: int | None, stride: int | None, cache_dir: str | None) -> TokenWindows:
    if ctx.tokenizer is None:
        raise GptkitError("dataset 'text' needs a tokenizer ([data] tokenizer)")
    max_length = checked_max_length(ctx, max_length)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    files = text_files(path, cache)
    tokens = token_file(files, ctx.tokenizer, cache)
    windows = TokenWindows(tokens, max_length, stride or max_length, path)
    if len(windows) == 0:
        what = "is empty" if len(tokens) == 0 else f"has {len(tokens)} tokens, too short for one window of {max_length + 1}"
        raise GptkitError(f"{path}: the text {what}; use more text or a smaller data.dataset.max_length")
    return windows


@hookimpl
def register_components(registry):
    doc = "Sliding windows over a text file, a folder of .txt files or a URL (tokenized once, memory-mapped)."
    registry.dataset.register("text", text_dataset, params=TextParams, doc=doc)
