"""Downloads: gptkit's cache folder and one resumable, length-checked HTTP fetch, used by the weight
loaders and the datasets alike.

Downloads go to `<file>.part` and are renamed into place only once their size matches what the
server announced, so a file under its final name is always whole; an interrupted transfer resumes
from the `.part` with an HTTP Range request, in the same call or the next one. A download that gets
nothing (offline, refused, 404) leaves nothing: no empty `.part`, no folder it made.
"""

from __future__ import annotations

import hashlib
import http.client
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


def is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def download_once(url: str, cache: Path) -> Path:
    """The file at `url`, downloaded once into `cache/downloads` (resumable, checked, atomic: see
    `fetch`) and read from there afterwards; datasets given by URL come through here."""
    name = os.path.basename(url.split("?")[0]) or "download"
    target = Path(cache) / "downloads" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        return target
    try:
        return fetch([url], target)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; check the address, or set data.dataset.path to a local file") from None


def offline_hint(command: str, folder: Path | None = None) -> str:
    """What to do about a failed model download on a machine without internet."""
    to = f" to {folder}, or anywhere and" if folder else " anywhere and"
    return (f"offline? run `{command}` on a machine with internet, copy the folder it prints{to} name that "
            "folder as the model (init.checkpoint.model=FOLDER in an experiment)")


class DownloadError(GptkitError):
    """No URL served the file (offline, refused, an HTTP error); the message says why each failed."""


class TransferError(Exception):
    """One URL failed (HTTP error, refused, interrupted); the next URL may still work."""


def fetch(urls: Iterable[str], dest: Path) -> Path:
    """Download `dest` from the first of `urls` that serves it; the error lists why each failed.
    Whatever fails, the folders it made for `dest` go again when they are left empty."""
    dest = Path(dest)
    made = [folder for folder in [dest.parent, *dest.parent.parents] if not folder.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        failures = []
        for url in urls:
            try:
                _fetch_one(url, dest)
                return dest
            except TransferError as exc:
                failures.append(f"{url}: {exc}")
        raise DownloadError(f"could not download {dest.name} into {dest.parent}: " + "; ".join(failures))
    except BaseException:
        part = _part(dest)
        if part.is_file() and part.stat().st_size == 0:  # a connection that broke before the first byte
            part.unlink()
        for folder in made:
            if any(folder.iterdir()):
                break
            folder.rmdir()
        raise


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _fetch_one(url: str, dest: Path) -> None:
    part = _part(dest)
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
    if part.is_file() and part.stat().st_size:
        raise TransferError(f"transfer kept breaking off; {part.name} is kept and the next try resumes it")
    raise TransferError("transfer kept breaking off before its first byte")


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
