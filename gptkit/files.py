"""Files written so that a crash or a full disk never leaves a half-written one under its final name,
and text read so that bad bytes (or malformed JSON) are an error naming the file, line and byte (or
column).

A write that fails raises `WriteError` naming the file and the reason in plain words (a full disk, a
read-only folder); what was there before is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from gptkit.errors import GptkitError, WriteError
from gptkit.json_errors import malformed_json

PLAIN_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (not writable by this user)",
}


def plain_reason(exc: OSError) -> str:
    return PLAIN_REASONS.get(exc.errno, exc.strerror or str(exc))


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError inside the block becomes a WriteError naming `path`."""
    try:
        yield
    except OSError as exc:
        raise WriteError(path, plain_reason(exc)) from exc


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems refuse
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp folder into place; an old `final` is moved aside to `.NAME.old` and
    removed only after (`recover_replaced_dirs` puts it back if a kill comes between the renames)."""
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A temp folder beside `final` for the block to fill. When the block succeeds, its files are
    synced, given the modes the umask gives new files (mkdtemp makes 0700, safetensors 0600), and it
    is moved into place (`replace_dir`); when the block fails, it is removed. An OSError outside the
    block is a WriteError naming `final`."""
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        with writing(final):
            umask = os.umask(0)
            os.umask(umask)
            for path in [tmp, *tmp.rglob("*")]:
                if path.is_file():
                    fsync_file(path)
                os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
            replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_replaced_dirs(parent: Path) -> None:
    """Put back each `.NAME.old` folder of `replace_dir` whose NAME a kill left missing."""
    for old in Path(parent).glob(".*.old"):
        final = old.with_name(old.name[1 : -len(".old")])
        if old.is_dir() and not final.exists():
            os.replace(old, final)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside `path` (`.NAME.tmp`) for the block to write; moved over `path` when the
    block succeeds, removed when it fails (WriteError naming `path` for an OSError)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path):
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_text(path: Path, text: str) -> None:
    """Append `text` to `path` (created if missing); when that fails the file is cut back to its
    old length, so a full disk leaves no half-written line (WriteError naming `path`)."""
    data = memoryview(text.encode("utf-8"))
    with writing(path), open(path, "ab", buffering=0) as f:
        end = f.seek(0, os.SEEK_END)
        try:
            while data:
                data = data[f.write(data) :]
        except OSError:
            with contextlib.suppress(OSError):
                f.truncate(end)
            raise


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of `atomic_path` that a killed process left in `folder`."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def sha256_file(path: Path, block: int = 1 << 24) -> str:
    """The file's sha256, read in large blocks into one reused buffer (about 1.5 GB/s with SHA-NI)."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(block))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def decode_utf8(data: bytes, path: str | Path, offset: int = 0, line: int = 1) -> str:
    """UTF-8 text; bad bytes are an error naming the file, line and byte offset (`data` starts at those)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line += data.count(b"\n", 0, exc.start)
        raise GptkitError(
            f"{path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, byte offset {offset + exc.start}; "
            "convert it to UTF-8 (e.g. `iconv -t utf-8`)"
        ) from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; an unreadable file or bad bytes are errors naming the file and where."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GptkitError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return decode_utf8(data, path)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, whose I/O errors (a full disk...) come back as the OSError they are."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from exc


def read_json(path: str | Path) -> Any:
    """The JSON value of a UTF-8 file; unreadable, bad bytes or malformed JSON are an error naming
    the file and where."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise GptkitError(malformed_json(path, exc)) from None
