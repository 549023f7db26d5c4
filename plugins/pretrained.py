"""What the pretrained-weight loaders share: the download cache, resumable HTTP downloads and
tensor-name checks that name the offending tensor.

Downloads go to `<file>.part` and are renamed into place only once their size matches what the
server announced, so a file under its final name is always whole; an interrupted transfer resumes
from the `.part` with an HTTP Range request, in the same call or the next one.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from gptkit.errors import GptkitError

CHUNK = 1 << 20
TIMEOUT_S = 30
RETRIES = 5  # transfers that break after making progress are resumed this many times


def cache_dir() -> Path:
    """gptkit's download cache: $GPTKIT_CACHE, else $XDG_CACHE_HOME/gptkit, else ~/.cache/gptkit."""
    if os.environ.get("GPTKIT_CACHE"):
        return Path(os.environ["GPTKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gptkit"


class TransferError(Exception):
    """One URL failed (HTTP error, refused, interrupted); the next URL may still work."""


def fetch(urls: Iterable[str], dest: Path) -> Path:
    """Download `dest` from the first of `urls` that serves it; the error lists why each failed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        try:
            _fetch_one(url, dest)
            return dest
        except TransferError as exc:
            failures.append(f"{url}: {exc}")
    raise GptkitError(f"could not download {dest.name} into {dest.parent}: " + "; ".join(failures))


def _fetch_one(url: str, dest: Path) -> None:
    part = dest.with_name(dest.name + ".part")
    for _ in range(RETRIES + 1):
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                total = _receive(response, part, offset, dest.name)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the .part is not a prefix of this file: start over
                part.unlink(missing_ok=True)
                continue
            raise TransferError(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise TransferError(str(reason)) from None
        except (http.client.HTTPException, ConnectionError, socket.timeout) as exc:
            received = part.stat().st_size if part.exists() else 0
            if received > offset:
                continue  # progress was made: resume from where it broke
            raise TransferError(f"transfer failed ({type(exc).__name__}: {exc})") from None
        size = part.stat().st_size
        if total is not None and size != total:
            if size < total:
                continue
            part.unlink(missing_ok=True)
            raise TransferError(f"received {size} bytes, the server announced {total}")
        os.replace(part, dest)
        return
    raise TransferError(f"transfer kept breaking off; {part.name} is kept and the next try resumes it")


def _receive(response, part: Path, offset: int, label: str) -> int | None:
    """Write the response body to `part` (appending on 206); return the file's announced full size."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        total = int(total) if total.isdigit() else (offset + int(length) if length else None)
        mode = "ab"
    else:  # a full answer: the server ignored the Range, or there was none
        offset, mode = 0, "wb"
        total = int(length) if length else None
    try:
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False
        ) as bar:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except (http.client.HTTPException, ConnectionError, socket.timeout):
        raise
    except OSError as exc:  # disk full, read-only folder...: no partial file is kept
        part.unlink(missing_ok=True)
        raise GptkitError(f"{part.with_name(label)}: cannot write ({exc.strerror or exc})") from None
    return total


def read_gpt2_json(path: Path, size_keys: Iterable[str], missing: str = "missing") -> dict:
    """The JSON object of a GPT-2 folder's hparams.json or config.json, checked to give each of
    `size_keys` as a positive integer and an n_embd that n_head divides; else one error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptkitError(f"{path}: {missing}") from None
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
GPT2_BLOCK = [
    ("ln_1", "weight", "norm1.weight", False),
    ("ln_1", "bias", "norm1.bias", False),
    ("attn.c_attn", "weight", "attn.qkv.weight", True),
    ("attn.c_attn", "bias", "attn.qkv.bias", False),
    ("attn.c_proj", "weight", "attn.proj.weight", True),
    ("attn.c_proj", "bias", "attn.proj.bias", False),
    ("ln_2", "weight", "norm2.weight", False),
    ("ln_2", "bias", "norm2.bias", False),
    ("mlp.c_fc", "weight", "ff.fc.weight", True),
    ("mlp.c_fc", "bias", "ff.fc.bias", False),
    ("mlp.c_proj", "weight", "ff.proj.weight", True),
    ("mlp.c_proj", "bias", "ff.proj.bias", False),
]
GPT2_FINAL = [("ln_f", "weight", "final_norm.weight", False), ("ln_f", "bias", "final_norm.bias", False)]


def gpt2_name_map(n_layer: int, spell) -> list[tuple[str, str, bool]]:
    """(the format's name, gptkit name, is a Conv1D weight) for every GPT-2 tensor; `spell(block,
    module, parameter)` writes a name in the format's spelling (block None outside the blocks)."""
    names = [(spell(None, m, p), pt, conv) for m, p, pt, conv in GPT2_EMBEDDINGS]
    for i in range(n_layer):
        names += [(spell(i, m, p), f"blocks.{i}.{pt}", conv) for m, p, pt, conv in GPT2_BLOCK]
    return names + [(spell(None, m, p), pt, conv) for m, p, pt, conv in GPT2_FINAL]
